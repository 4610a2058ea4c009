"""Batched augmentation and normalization, checked against numpy slicing and formulas."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from normrepro import augment
from normrepro.augment import (
    AUGMENTATIONS,
    batches_per_epoch,
    crop_flip,
    iterate_batches,
    make_batch_transform,
    nf_augment,
    rotate,
)
from normrepro.data import TensorSet, make_synthetic

torch.set_num_threads(1)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def stats_of(x):
    """Independent float64 numpy statistics of a uint8 [N, C, H, W] set, in [0, 1] units."""
    a = x.numpy().astype(np.float64) / 255.0
    return SimpleNamespace(
        mean=torch.tensor(a.mean(axis=(0, 2, 3))),
        std=torch.tensor(a.std(axis=(0, 2, 3))),
        pixel_mean=torch.tensor(a.mean(axis=0)),
    )


@pytest.fixture(scope="module")
def images():
    return make_synthetic(256, 8)[0].x  # uint8 [256, 3, 32, 32]


@pytest.mark.parametrize("augment_name", AUGMENTATIONS)
@pytest.mark.parametrize("normalize", ["channel", "pixel_mean"])
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_transform_keeps_shape_and_gives_float32(augment_name, normalize, shape):
    x = torch.randint(0, 256, (16, *shape), dtype=torch.uint8)
    for train in (True, False):
        tf = make_batch_transform(augment_name, normalize, stats_of(x), train=train)
        out = tf(x, gen())
        assert out.shape == x.shape and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_eval_transform_is_the_normalization_formula(images):
    s = stats_of(images)
    a = images.numpy().astype(np.float64) / 255.0
    mean, std = s.mean.numpy()[None, :, None, None], s.std.numpy()[None, :, None, None]
    for name in AUGMENTATIONS:
        out = make_batch_transform(name, "channel", s, train=False)(images, None)
        np.testing.assert_allclose(out.numpy(), (a - mean) / std, atol=1e-5)
    out = make_batch_transform("none", "pixel_mean", s, train=True)(images, gen())
    np.testing.assert_allclose(out.numpy(), a - s.pixel_mean.numpy()[None], atol=1e-6)


def test_normalized_train_set_has_zero_mean_unit_std(images):
    out = make_batch_transform("none", "channel", stats_of(images), train=True)(images, gen())
    out = out.double().numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    out = make_batch_transform("none", "pixel_mean", stats_of(images), train=True)(images, gen())
    np.testing.assert_allclose(out.double().numpy().mean(axis=0), 0.0, atol=1e-6)


def test_crop_flip_outputs_are_windows_of_the_zero_padded_image():
    # One random image (all its windows differ), repeated: each output must be one of the
    # 9 x 9 offsets x 2 mirrorings of the zero-padded image, cut with numpy.
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=gen(1))
    padded = np.pad(image.numpy(), ((0, 0), (4, 4), (4, 4)))
    windows = {}
    for dy in range(9):
        for dx in range(9):
            window = padded[:, dy : dy + 32, dx : dx + 32]
            windows[window.tobytes()] = (dy, dx, False)
            windows[window[:, :, ::-1].copy().tobytes()] = (dy, dx, True)
    assert len(windows) == 162
    out = crop_flip(image.expand(3000, -1, -1, -1), gen(2)).contiguous().numpy()
    found = [windows.get(o.tobytes()) for o in out]
    assert None not in found
    assert set(found) == set(windows.values())  # every offset and mirroring occurs
    mirrored = np.mean([f[2] for f in found])
    assert abs(mirrored - 0.5) < 0.05
    corner = [o for o, f in zip(out, found, strict=True) if f == (0, 0, False)][0]
    assert (corner[:, :4, :] == 0).all() and (corner[:, :, :4] == 0).all()  # black padding


def test_crop_flip_without_padding_only_mirrors():
    x = torch.randint(0, 256, (64, 2, 5, 7), dtype=torch.uint8, generator=gen(3))
    out = crop_flip(x, gen(4), pad=0).numpy()
    same = (out == x.numpy()).all(axis=(1, 2, 3))
    mirrored = (out == x.numpy()[:, :, :, ::-1]).all(axis=(1, 2, 3))
    assert (same ^ mirrored).all()  # exactly one of the two, per image
    assert 16 < mirrored.sum() < 48


@pytest.mark.parametrize("name", ["standard", "nf"])
def test_augmentation_is_per_sample(name, images):
    batch = images[:1].expand(64, -1, -1, -1)  # 64 copies of one image
    out = make_batch_transform(name, "channel", stats_of(images), train=True)(batch, gen())
    distinct = {o.numpy().tobytes() for o in out}
    assert len(distinct) > 20


@pytest.mark.parametrize("name", ["standard", "nf"])
def test_same_seed_same_batch_other_seed_other_batch(name, images):
    tf = make_batch_transform(name, "channel", stats_of(images), train=True)
    a, b, c = tf(images, gen(5)), tf(images, gen(5)), tf(images, gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("rows_only", [True, False])
def test_nf_handles_tiny_batches(rows_only):
    for b in (0, 1, 2):
        x = torch.rand(b, 3, 8, 8, generator=gen())
        assert nf_augment(x, gen(b), rows_only=rows_only).shape == x.shape


def test_rotate_quarter_turns_match_numpy_rot90():
    x = torch.rand(4, 3, 8, 8, generator=gen(7))
    ccw = np.rot90(x.numpy(), k=1, axes=(2, 3))  # counter-clockwise as displayed
    np.testing.assert_allclose(rotate(x, torch.full((4,), 90.0)).numpy(), ccw, atol=1e-5)
    cw = np.rot90(x.numpy(), k=-1, axes=(2, 3))
    np.testing.assert_allclose(rotate(x, torch.full((4,), -90.0)).numpy(), cw, atol=1e-5)
    np.testing.assert_allclose(rotate(x, torch.zeros(4)).numpy(), x.numpy(), atol=1e-5)


@pytest.mark.parametrize("rows_only", [True, False])
def test_nf_proportions_and_rotation_range(rows_only):
    # A linear ramp along the columns: a rotation by t leaves a linear image whose gradient turns
    # by t (bilinear sampling of a linear field is exact away from the border), noise leaves a
    # rough residual, a mirror reverses the ramp.
    n, size = 20000, 16
    ramp = torch.arange(size, dtype=torch.float32) / size
    x = ramp.expand(n, 1, size, size).contiguous()
    out = nf_augment(x, gen(8), rows_only=rows_only).numpy()
    x = x.numpy()
    untouched = (out == x).all(axis=(1, 2, 3))
    mirrored = (out == x[..., ::-1]).all(axis=(1, 2, 3))
    centre = out[:, 0, 4:12, 4:12]  # inside the image for any rotation up to 15 degrees
    lap = centre[:, 1:-1, 1:-1] * 4 - centre[:, :-2, 1:-1] - centre[:, 2:, 1:-1]
    lap = lap - centre[:, 1:-1, :-2] - centre[:, 1:-1, 2:]
    rough = np.abs(lap).mean(axis=(1, 2)) > augment.NF_NOISE_STD  # white noise: ~0.33
    smooth = np.abs(lap).max(axis=(1, 2)) < 1e-4
    rotated = ~untouched & ~mirrored & smooth
    assert not (untouched & mirrored).any() and not (rough & smooth).any()
    shares = [m.mean() for m in (untouched, rough & ~untouched, rotated, mirrored)]
    np.testing.assert_allclose(shares, [0.4, 0.2, 0.2, 0.2], atol=0.015)
    assert math.isclose(sum(shares), 1.0, abs_tol=1e-9)  # every sample is exactly one kind

    # Gradient direction of the rotated ramps: columns d/dj, rows d/di.
    ddj = (centre[rotated][:, :, -1] - centre[rotated][:, :, 0]).mean(axis=1)
    ddi = (centre[rotated][:, -1, :] - centre[rotated][:, 0, :]).mean(axis=1)
    angles = np.degrees(np.abs(np.arctan2(ddi, ddj)))
    assert angles.max() <= augment.NF_MAX_DEGREES + 0.01
    assert angles.max() > 14.0 and angles.min() < 1.0  # the whole range is used


def test_iterate_batches_covers_each_image_once_per_epoch():
    y = torch.arange(103)
    tset = TensorSet(torch.zeros(103, 1, 2, 2, dtype=torch.uint8), y)
    g = gen(9)
    epochs = [[b[1] for b in iterate_batches(tset, 10, True, g)] for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [10] * 10 + [3]
        assert sorted(torch.cat(batches).tolist()) == list(range(103))
    assert not torch.equal(torch.cat(epochs[0]), torch.cat(epochs[1]))  # reshuffled
    kept = list(iterate_batches(tset, 10, True, g, drop_last=True))
    assert len(kept) == 10 == batches_per_epoch(103, 10, drop_last=True)
    assert batches_per_epoch(103, 10) == 11
    in_order = torch.cat([b[1] for b in iterate_batches(tset, 10, False)])
    assert torch.equal(in_order, y)
    first = [b[1] for b in iterate_batches(tset, 10, True, gen(9))]
    assert all(torch.equal(a, b) for a, b in zip(first, epochs[0], strict=True))


def test_bad_names_and_missing_generator_are_rejected(images):
    s = stats_of(images)
    with pytest.raises(ValueError, match="augment: got 'cutout'; allowed: standard, nf, none"):
        make_batch_transform("cutout", "channel", s, train=True)
    with pytest.raises(ValueError, match="normalize: got 'zca'"):
        make_batch_transform("none", "zca", s, train=True)
    with pytest.raises(ValueError, match="torch.Generator"):
        make_batch_transform("standard", "channel", s, train=True)(images, None)
    with pytest.raises(ValueError, match="torch.Generator"):
        next(iterate_batches(TensorSet(images, torch.zeros(256)), 8, True, None))


def test_channels_last_output_on_request(images):
    for name in AUGMENTATIONS:
        tf = make_batch_transform(
            name, "channel", stats_of(images), True, memory_format=torch.channels_last
        )
        assert tf(images[:8], gen()).is_contiguous(memory_format=torch.channels_last)
        tf = make_batch_transform(name, "channel", stats_of(images), True)
        assert tf(images[:8], gen()).is_contiguous()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_cuda_batches_are_deterministic(name, images):
    cuda = torch.device("cuda")
    x = images.to(cuda)
    s = stats_of(images)
    s = SimpleNamespace(**{k: v.to(cuda) for k, v in vars(s).items()})
    tf = make_batch_transform(name, "channel", s, train=True)
    g = torch.Generator(cuda)
    a, b = tf(x, g.manual_seed(0)), tf(x, g.manual_seed(0))
    assert a.device.type == "cuda" and a.shape == x.shape and torch.equal(a, b)
    cpu_eval = make_batch_transform(name, "channel", stats_of(images), train=False)(images)
    torch.testing.assert_close(make_batch_transform(name, "channel", s, False)(x).cpu(), cpu_eval)
