"""Training throughput (images/s) on this machine: the compute ceiling, the project's loop and a
conventional PIL + DataLoader loop, for ResNet-20 with BN and GN, in one process.

    python benchmarks/train_throughput.py [--steps 5] [--repeats 3] [--warmup 2]
        [--batch-sizes 8 128] [--norms bn gn] [--model resnet20] [--device auto] [--workers 0 2]
        [--threads N]

bare       loop.EpochLoop.step on one fixed, already normalized batch: the compute ceiling.
loop       loop.EpochLoop.run_epoch, exactly as src/train.py runs it: uint8 images on the
           device, batched random crop + flip + normalization, per-step lr and loss bookkeeping.
reference  a torchvision VisionDataset of PIL images with RandomCrop(32, padding=4),
           RandomHorizontalFlip, ToTensor, Normalize; DataLoader(shuffle, --workers: one
           column per worker count); NCHW
           batches moved to the device; the same step. (In-memory synthetic images: CIFAR-10
           cannot be downloaded here; they have CIFAR's shape, 3 x 32 x 32 uint8.)
The three run interleaved, --repeats times, and each reports its best round: on a shared machine
the best round is the one least disturbed by other work. Warm-up steps are never timed. On CUDA
the model runs as in train.py (channels_last, bf16 autocast); the reference keeps NCHW.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import torch
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from normrepro import data
from normrepro.augment import make_batch_transform
from normrepro.loop import EpochLoop
from normrepro.models import build_model
from normrepro.packing import PackedModel
from normrepro.train import cpu_name


class PILImages(VisionDataset):
    """A list of PIL images and labels, transformed per sample as a conventional loader does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        super().__init__(root=None, transform=transform)
        from PIL import Image

        self.images = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in x]
        self.labels = y.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), self.labels[i]


def reference_transform(splits) -> transforms.Compose:
    """The conventional per-sample PIL pipeline for CIFAR-10."""
    return transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(splits.mean.tolist(), splits.std.tolist()),
    ])  # fmt: skip


def make_loop(args, norm: str, batch_size: int, splits, device, channels_last: bool) -> EpochLoop:
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(args.model, norm, 10, 3, **({"groups": 8} if norm == "gn" else {}))
    # A single run is a pack of one (src/packing.py), as src/train.py trains it.
    model = PackedModel([model], [torch.Generator(device)]).to(device, memory_format=memory_format)
    return EpochLoop(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        train_set=splits.train,
        transform=make_batch_transform("standard", "channel", splits, True, memory_format),
        generators=[torch.Generator(device).manual_seed(0)],
        batch_size=batch_size,
        lr=lambda epoch, step: 0.01,
        autocast=torch.autocast(device.type, torch.bfloat16, enabled=cuda),
        check_every=50 if cuda else 1,
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare(loop: EpochLoop, args, splits, device) -> Callable[[int], None]:
    """n steps of the step alone, on one fixed batch that is already normalized."""
    xb, y = loop.train_set.x[: loop.batch_size], loop.train_set.y[: loop.batch_size, None]
    x = loop.transform(xb, loop.generators[0])
    loop.model.train()

    def run(n: int) -> None:
        for _ in range(n):
            loop.step(x, y)

    return run


def project_loop(loop: EpochLoop, args, splits, device) -> Callable[[int], None]:
    """run_epoch over exactly n batches (an epoch of n * batch_size images)."""
    full = loop.train_set

    def run(n: int) -> None:
        loop.train_set = data.TensorSet(
            full.x[: n * loop.batch_size], full.y[: n * loop.batch_size]
        )
        loop.run_epoch(0)

    return run


def reference(loop: EpochLoop, args, splits, device, workers: int) -> Callable[[int], None]:
    """n steps of the conventional loop: PIL transforms per sample, DataLoader, NCHW."""
    n_images = args.steps * loop.batch_size
    tf = reference_transform(splits)
    x, y = splits.train.x[:n_images].cpu(), splits.train.y[:n_images].cpu()
    loader = DataLoader(
        PILImages(x, y, tf),
        batch_size=loop.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    loop.model.train()

    def run(n: int) -> None:
        for i, (xb, yb) in enumerate(loader):
            if i == n:
                break
            y = yb.to(device, non_blocking=True)[:, None]  # [B, 1]: a pack of one
            loop.step(xb.to(device, non_blocking=True), y)

    return run


def variants(args) -> dict[str, Callable]:
    """name -> runner factory; one conventional reference per DataLoader worker count."""
    refs = {
        f"ref w{w}": (lambda loop, a, s, d, w=w: reference(loop, a, s, d, w)) for w in args.workers
    }
    return {"bare": bare, "loop": project_loop, **refs}


def measure(args, norm: str, batch_size: int, splits, device) -> dict[str, float]:
    """Best images/s of each variant over --repeats rounds of --steps steps, interleaved."""
    cuda = device.type == "cuda"
    runners = {
        name: make(make_loop(args, norm, batch_size, splits, device,
                             cuda and not name.startswith("ref")), args, splits, device)
        for name, make in variants(args).items()
    }  # fmt: skip
    best = dict.fromkeys(runners, 0.0)
    for run in runners.values():
        run(args.warmup)
    for _ in range(args.repeats):
        for name, run in runners.items():
            sync(device)
            t0 = time.perf_counter()
            run(args.steps)
            sync(device)
            best[name] = max(best[name], args.steps * batch_size / (time.perf_counter() - t0))
    return best


def data_only(args, splits, device, batch_size: int) -> tuple[float, float]:
    """Images/s of the input pipeline alone (no model): ours vs the PIL DataLoader (0 workers).
    Shows what the project's loader saves per image, whatever the model costs."""
    from normrepro.augment import iterate_batches

    n_images = args.steps * batch_size
    gen = torch.Generator(device).manual_seed(0)
    tf = make_batch_transform("standard", "channel", splits, True)
    ref_tf = reference_transform(splits)
    subset = data.TensorSet(splits.train.x[:n_images], splits.train.y[:n_images])
    pil = PILImages(subset.x.cpu(), subset.y.cpu(), ref_tf)
    best_ours = best_ref = 0.0
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        for xb, _yb in iterate_batches(subset, batch_size, True, gen, drop_last=True):
            tf(xb, gen)
        sync(device)
        best_ours = max(best_ours, n_images / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for xb, _yb in DataLoader(pil, batch_size=batch_size, shuffle=True, drop_last=True):
            xb.to(device)
        sync(device)
        best_ref = max(best_ref, n_images / (time.perf_counter() - t0))
    return best_ours, best_ref


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the first")
    ap.add_argument("--repeats", type=int, default=3, help="measurements per cell: the best")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 128])
    ap.add_argument("--norms", nargs="+", default=["bn", "gn"])
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="reference DataLoader worker counts (2: PyTorch's CIFAR-10 tutorial)",
    )
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    args = ap.parse_args(argv)
    if min(args.steps, args.warmup, args.repeats) < 1:
        ap.error("--steps, --warmup and --repeats must be >= 1")

    cuda = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        torch.backends.cudnn.benchmark = True
        name = torch.cuda.get_device_name(device)
    else:
        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    n = max(args.warmup, args.steps) * max(args.batch_sizes)
    synthetic = {"name": "synthetic", "train_subset": n, "test_subset": 1, "val_size": 0}
    splits = data.load_splits(synthetic, device)

    print(f"# {device.type}: {name} | torch {torch.__version__} | {args.model}, 3x32x32 images")
    print(f"# images/s: best of {args.repeats} x {args.steps} steps (after {args.warmup} warm-up "
          f"steps); images/s per column")  # fmt: skip
    refs = [f"ref w{w}" for w in args.workers]
    header = ["norm", "batch", "bare", "loop", *refs, "loop/bare", *[f"loop/{r}" for r in refs]]
    print(" ".join(f"{h:>11}" for h in header))
    for norm in args.norms:
        for bs in args.batch_sizes:
            speed = measure(args, norm, bs, splits, device)
            ours = speed["loop"]
            row = [norm, bs, *(f"{speed[k]:.0f}" for k in ("bare", "loop", *refs))]
            row += [f"{ours / speed['bare']:.2f}", *(f"{ours / speed[r]:.2f}" for r in refs)]
            print(" ".join(f"{v:>11}" for v in row))
            sys.stdout.flush()
    print("\n# input pipeline alone (no model): images/s")
    print(" ".join(f"{h:>11}" for h in ("batch", "ours", "ref w0", "ours/ref")))
    for bs in args.batch_sizes:
        ours, ref = data_only(args, splits, device, bs)
        print(" ".join(f"{v:>11}" for v in (bs, f"{ours:.0f}", f"{ref:.0f}", f"{ours / ref:.1f}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
