"""Packed seeds (src/packing.py): K runs trained as one fused model vs the same K runs one after
another, images/s, in one process; and what runtime.pack `auto` chooses from them
(src/normrepro/pack_policy.py).

    python benchmarks/pack_throughput.py [--batch-sizes 2 8 32 128] [--packs 2 5] [--norms bn gn]
        [--images 512] [--rounds 3] [--threads N] [--device auto] [--switches]
        [--write-policy]

separate   K EpochLoops of one run each (how src/train.py trains a pack of one), each running
           one epoch of --images images: K x --images images in all.
packed     one EpochLoop of a pack of K runs, one epoch of --images images per run.
Both are loop.py's EpochLoop.run_epoch as the trainer runs it (per-run augmentation from
each run's generator, per-step lr, loss bookkeeping) on CIFAR-shaped synthetic uint8 images,
with the device's runtime switches (loop.DEVICE_SWITCHES). The two run interleaved, --rounds
times; each round gives one packed / separate ratio (its two halves ran back to back, so a slow
drift of a shared machine's load cancels out), and a cell reports the median ratio and the
lowest and highest round: one round is too noisy to choose from on a shared machine.
--write-policy records the cells in benchmarks/pack_policy.json (the file `auto` reads) for this
device type, with this command, the date and the machine; the other device types are kept.
--switches adds a table for the switches themselves: channels_last vs NCHW, bf16 autocast vs
fp32 (each a ratio of images/s, packs of 1 and of the largest K; best of the rounds).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from normrepro import data, pack_policy
from normrepro.augment import make_batch_transform
from normrepro.loop import DEVICE_SWITCHES, EpochLoop
from normrepro.models import build_model
from normrepro.packing import PackedModel
from normrepro.train import cpu_name


def make_loop(norm, batch, k, splits, device, channels_last: bool, bf16: bool) -> EpochLoop:
    """A pack of k ResNet-20 runs (seeds 0..k-1) over the first --images training images."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(
            build_model("resnet20", norm, 10, 3, **({"groups": 8} if norm == "gn" else {}))
        )
    gens = [torch.Generator(device).manual_seed(s) for s in range(k)]
    pack = PackedModel(models, [torch.Generator(device) for _ in models])
    pack = pack.to(device, memory_format=fmt)
    return EpochLoop(
        model=pack,
        optimizer=torch.optim.SGD(pack.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4),
        train_set=splits.train,
        transform=make_batch_transform("standard", "channel", splits, True, fmt),
        generators=gens,
        batch_size=batch,
        lr=lambda epoch, step: 0.01,
        autocast=torch.autocast(device.type, torch.bfloat16, enabled=bf16),
        check_every=50 if device.type == "cuda" else 1,
    )


def timed_epoch(loops: list[EpochLoop], device) -> float:
    """Seconds for one epoch of every loop, one after another."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for loop in loops:
        loop.run_epoch(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def round_rates(variants: dict[str, list[EpochLoop]], images, rounds: int, device) -> dict:
    """name -> images/s (all runs' images) of each of `rounds` interleaved rounds of one epoch
    of `images` (a data.TensorSet) per run, after one untimed warm-up epoch of two batches."""
    for loops in variants.values():  # warm-up: allocator, kernels, first-call overheads
        for loop in loops:
            n = 2 * loop.batch_size
            loop.train_set = data.TensorSet(images.x[:n], images.y[:n])
        timed_epoch(loops, device)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, loops in variants.items():
            for loop in loops:
                loop.train_set = images
            n_images = len(images) * sum(loop.members for loop in loops)
            rates[name].append(n_images / timed_epoch(loops, device))
    return rates


def best_rates(variants: dict[str, list[EpochLoop]], images, rounds: int, device) -> dict:
    """name -> the best round's images/s (the least disturbed on a shared machine)."""
    return {k: max(v) for k, v in round_rates(variants, images, rounds, device).items()}


def pack_cell(norm, batch, k, splits, images, args, device, cl, bf16) -> dict:
    """One (norm, batch, K) cell: per-round packed / separate ratios, median and range."""
    variants = {
        "separate": [make_loop(norm, batch, 1, splits, device, cl, bf16)] * k,
        "packed": [make_loop(norm, batch, k, splits, device, cl, bf16)],
    }
    rates = round_rates(variants, images, args.rounds, device)
    ratios = [p / s for p, s in zip(rates["packed"], rates["separate"], strict=True)]
    return {
        "norm": norm, "batch": batch, "k": k, "rounds": len(ratios),
        "median": round(statistics.median(ratios), 3),
        "low": round(min(ratios), 3), "high": round(max(ratios), 3),
        "separate_ips": statistics.median(rates["separate"]),
        "packed_ips": statistics.median(rates["packed"]),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[2, 8, 32, 128])
    ap.add_argument("--packs", type=int, nargs="+", default=[2, 5], help="runs per pack (K)")
    ap.add_argument("--norms", nargs="+", default=["bn", "gn"])
    ap.add_argument("--images", type=int, default=512, help="training images per run and round")
    ap.add_argument("--rounds", "--repeats", type=int, default=3, help="timed rounds per cell")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--switches", action="store_true", help="also time channels_last and bf16")
    ap.add_argument("--write-policy", action="store_true",
                    help="record the ratios in benchmarks/pack_policy.json for this device")  # fmt: skip
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.images < 1:
        ap.error(f"--rounds and --images must be >= 1; got {args.rounds} and {args.images}")
    cuda = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = max(args.images, max(args.batch_sizes))
    cfg = {"name": "synthetic", "train_subset": size, "test_subset": 10, "val_size": 0}
    splits = data.load_splits(cfg, device)
    images = data.TensorSet(splits.train.x[: args.images], splits.train.y[: args.images])
    name = torch.cuda.get_device_name(device) if cuda else cpu_name()
    machine = name if cuda else f"{name}, {torch.get_num_threads()} threads"
    print(f"# {device.type}: {machine} | torch {torch.__version__}")
    switches = DEVICE_SWITCHES[device.type]
    cl, bf16 = switches["channels_last"], switches["bf16"]
    print(f"# resnet20 (0.27M params), 3x32x32, channels_last={cl}, bf16={bf16}")
    print(f"# packed/separate images/s: median [lowest, highest] of {args.rounds} interleaved "
          f"rounds of {args.images} images a run")  # fmt: skip
    head = ("norm", "batch", "K", "separate", "packed", "packed/sep", "range")
    print("".join(f"{h:>12}" for h in head))
    cells = []
    for norm in args.norms:
        for batch in args.batch_sizes:
            for k in args.packs:
                c = pack_cell(norm, batch, k, splits, images, args, device, cl, bf16)
                cells.append(c)
                row = (norm, batch, k, f"{c['separate_ips']:.0f}", f"{c['packed_ips']:.0f}",
                       f"{c['median']:.2f}", f"{c['low']:.2f}-{c['high']:.2f}")  # fmt: skip
                print("".join(f"{v:>12}" for v in row), flush=True)
    chosen = pack_policy.choose(cells)
    print("# auto from this measurement (lowest median over norms, K if > "
          f"{pack_policy.MIN_GAIN}x): "
          + "; ".join(f"batch {b}: K={k} ({r:.2f}x)" for b, (k, r) in chosen.items()))  # fmt: skip
    if args.write_policy:
        command = "python benchmarks/pack_throughput.py " + " ".join(argv or sys.argv[1:])
        path = pack_policy.record(device.type, cells, command.strip(), machine,
                                  torch=torch.__version__, model="resnet20",
                                  images_per_round=args.images)  # fmt: skip
        print(f"# wrote {path}")
    print(f"# {pack_policy.describe(device.type)}")
    if args.switches:
        switch_table(args, splits, images, device)
    return 0


def switch_table(args, splits, images, device) -> None:
    """images/s ratios of each switch on vs off, packs of 1 and of max(--packs)."""
    print("# switches: images/s with the switch on / off (the other switch off)")
    head = ("norm", "batch", "K", "channels_last", "bf16")
    print("".join(f"{h:>14}" for h in head))
    for norm in args.norms:
        for batch in (min(args.batch_sizes), max(args.batch_sizes)):
            for k in (1, max(args.packs)):
                variants = {
                    "plain": [make_loop(norm, batch, k, splits, device, False, False)],
                    "channels_last": [make_loop(norm, batch, k, splits, device, True, False)],
                    "bf16": [make_loop(norm, batch, k, splits, device, False, True)],
                }
                rate = best_rates(variants, images, args.rounds, device)
                row = (norm, batch, k, f"{rate['channels_last'] / rate['plain']:.2f}",
                       f"{rate['bf16'] / rate['plain']:.2f}")  # fmt: skip
                print("".join(f"{c:>14}" for c in row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
