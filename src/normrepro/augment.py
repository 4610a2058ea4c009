"""Batched normalization and augmentation on the training device (airbench style).

A batch is a uint8 [B, C, H, W] slice of the dataset tensor. Every random choice is drawn per
sample from the caller's torch.Generator, which must live on the batch's device: runs are
reproducible, no Python loop runs over samples, no PIL, no DataLoader.

    train_tf = make_batch_transform("standard", "channel", splits, train=True)
    eval_tf = make_batch_transform("standard", "channel", splits, train=False)
    for xb, yb in iterate_batches(splits.train, 128, shuffle=True, generator=gen):
        x = train_tf(xb, gen)  # float32 [B, C, H, W], normalized and augmented
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("standard", "nf", "none")
NORMALIZATIONS = ("channel", "pixel_mean")  # per-channel mean/std, or per-pixel mean (seed 000)

CROP_PAD = 4  # px of zero padding (black) before the random crop back to H x W
NF_PROBS = (0.4, 0.2, 0.2, 0.2)  # seed 002, per sample: untouched, noise, rotation, flip
NF_NOISE_STD = 0.1  # Gaussian noise std in normalized units (seed 002 gives no value)
NF_MAX_DEGREES = 15.0  # rotation angle ~ U(-15, 15) degrees, bilinear, zero (= mean) fill


def _check_generator(x: torch.Tensor, gen: torch.Generator) -> None:
    if gen is None or gen.device.type != x.device.type:
        raise ValueError(
            f"augmentation needs a torch.Generator on the batch's device {x.device}; "
            f"got {gen if gen is None else gen.device}"
        )


def crop_flip(x: torch.Tensor, gen: torch.Generator, pad: int = CROP_PAD) -> torch.Tensor:
    """Per sample: random H x W window of the zero-padded image, mirrored with probability 1/2.

    One gather does both (each output pixel reads one flat position of its padded image); x is
    [B, C, H, W] of any dtype, uint8 being cheapest.
    """
    b, c, h, w = x.shape
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad)).reshape(b, c, -1)  # [B, C, (H+2p) * (W+2p)]
    dy = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b, 1), device=dev, generator=gen)
    mirror = torch.rand(b, 1, device=dev, generator=gen) < 0.5
    cols = torch.arange(w, device=dev)
    cols = torch.where(mirror, w - 1 - cols, cols) + dx  # [B, W] source column of each output
    rows = torch.arange(h, device=dev) + dy  # [B, H]
    flat = rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]  # [B, H, W]
    flat = flat.view(b, 1, h * w).expand(b, c, h * w)
    return torch.gather(padded, 2, flat).view(b, c, h, w)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate each image of float [B, C, H, W] by its angle (degrees, counter-clockwise) about its
    centre; bilinear, zeros outside the source."""
    if x.shape[0] == 0:  # affine_grid rejects an empty batch
        return x.clone()
    rad = degrees.to(x.dtype) * (math.pi / 180.0)
    cos, sin, zero = rad.cos(), rad.sin(), torch.zeros_like(rad)
    # affine_grid maps output coords to input coords; y points down, so this turns content CCW.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def nf_augment(
    x: torch.Tensor, gen: torch.Generator, rows_only: bool | None = None
) -> torch.Tensor:
    """Seed 002: each sample independently untouched (40%), + Gaussian noise (20%), rotated up to
    15 degrees (20%) or mirrored (20%). Float [B, C, H, W] in, same out.

    rows_only (default: on the CPU) computes each operation on its chosen rows only; otherwise on
    the whole batch, selected with masks, which avoids a host sync on CUDA.
    """
    b, dev = x.shape[0], x.device
    u = torch.rand(b, device=dev, generator=gen)
    degrees = (torch.rand(b, device=dev, generator=gen) * 2 - 1) * NF_MAX_DEGREES
    edges = [sum(NF_PROBS[: k + 1]) for k in range(4)]  # Python floats: no host-device copy
    noisy, rotated, mirrored = ((u >= edges[k]) & (u < edges[k + 1]) for k in range(3))
    if rows_only if rows_only is not None else dev.type == "cpu":
        out = x.clone()
        rows = noisy.nonzero().squeeze(1)
        noise = torch.randn((len(rows), *x.shape[1:]), device=dev, dtype=x.dtype, generator=gen)
        out[rows] += noise * NF_NOISE_STD
        rows = rotated.nonzero().squeeze(1)
        out[rows] = rotate(x[rows], degrees[rows])
        rows = mirrored.nonzero().squeeze(1)
        out[rows] = x[rows].flip(3)
        return out
    noise = torch.randn(x.shape, device=dev, dtype=x.dtype, generator=gen) * NF_NOISE_STD
    out = torch.where(noisy[:, None, None, None], x + noise, x)
    out = torch.where(rotated[:, None, None, None], rotate(x, degrees), out)
    return torch.where(mirrored[:, None, None, None], x.flip(3), out)


def make_batch_transform(
    augment: str,
    normalize: str,
    stats,
    train: bool,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]:
    """Return f(x_uint8 [B, C, H, W], generator) -> float32 [B, C, H, W] in `memory_format`.

    stats: anything with .mean / .std ([C]) and .pixel_mean ([C, H, W]) on the data's device,
    in [0, 1] pixel units (a data.Splits). train=False: normalization only (generator unused).
    """
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment: got {augment!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: got {normalize!r}; allowed: {', '.join(NORMALIZATIONS)}")
    # normalized = pixel * scale + shift, with pixel the uint8 value.
    if normalize == "channel":
        scale = (1.0 / (255.0 * stats.std.float())).view(1, -1, 1, 1)
        shift = (-stats.mean.float() / stats.std.float()).view(1, -1, 1, 1)
    else:
        scale = torch.full((1, 1, 1, 1), 1.0 / 255.0, device=stats.pixel_mean.device)
        shift = -stats.pixel_mean.float().unsqueeze(0)
    mode = augment if train else "none"

    def transform(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if mode != "none":
            _check_generator(x, generator)
        if mode == "standard":  # crop and flip the uint8 pixels: black padding, 4x less data
            x = crop_flip(x, generator)
        x = x.contiguous(memory_format=memory_format).to(torch.float32, copy=True)
        x = x.mul_(scale).add_(shift)
        if mode == "nf":
            x = nf_augment(x, generator).contiguous(memory_format=memory_format)
        return x

    return transform


def iterate_batches(
    tset,
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x uint8 [b, C, H, W], y int64 [b]) batches of a data.TensorSet, on its device.

    shuffle: a new permutation from `generator` (on the data's device) each call, i.e. each epoch.
    drop_last: skip a final batch smaller than batch_size.
    """
    n = len(tset)
    if shuffle:
        _check_generator(tset.x, generator)
        order = torch.randperm(n, device=tset.x.device, generator=generator)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if shuffle:
            idx = order[start : start + batch_size]
            yield tset.x[idx], tset.y[idx]
        else:
            yield tset.x[start : start + batch_size], tset.y[start : start + batch_size]


def batches_per_epoch(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Number of batches iterate_batches yields for n images."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)
