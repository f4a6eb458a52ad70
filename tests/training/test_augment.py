"""Batched augmentation: parameter distributions, the batched path against the reference formulas (the release's
per-sample loop) for the same drawn parameters, identity when off, GT grids, no host synchronisation off the CPU."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from pscfast.ops._reference import identity_grid
from pscfast.training import augment
from pscfast.training.augment import (AugmentConfig, apply_appearance, augment_images, augment_pair, geometry_grid,
                                      sample_appearance, sample_geometry, tps_points)
from pscfast.training.augment_reference import (apply_appearance_reference, augment_pair_reference, augment_reference,
                                                blur_reference, geometry_grid_reference)
from tests.utils import assert_close, noncontiguous

CFG = AugmentConfig()
NEUTRAL = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0, "gray": False, "blur": False,
           "sigma": 1.0}


def _slice(p, i):
    return {k: v[i:i + 1] for k, v in p.items()}


def _params(n, device="cpu", **values):
    """Appearance parameters that leave an image as it is, except for the given values (scalars or (n,))."""
    p = {}
    for k, v in {**NEUTRAL, **values}.items():
        dtype = torch.bool if k in ("gray", "blur") else torch.float32
        p[k] = torch.as_tensor(v, dtype=dtype, device=device).expand(n).clone()
    return p


@pytest.fixture(params=["indexed", "masked"])
def selection(request, monkeypatch):
    """Both ways to skip the images an augmentation is off for: the CPU's indices of the selected images, and
    the whole batch with an identity for the others (a GPU's way, which needs no host synchronisation)."""
    if request.param == "masked":
        monkeypatch.setattr(augment, "_selected", lambda mask: None)
    return request.param


def test_batched_equals_per_sample_for_the_same_parameters():
    torch.manual_seed(4)
    x = torch.rand(5, 3, 40, 40)
    pa = sample_appearance(5, CFG)
    pa["blur"][:] = torch.tensor([True, False, True, False, True])
    batched = apply_appearance(x, pa)
    looped = torch.cat([apply_appearance(x[i:i + 1], _slice(pa, i)) for i in range(5)])
    torch.testing.assert_close(batched, looped)
    pg = sample_geometry(5, CFG)
    grid = geometry_grid(pg, 40, 40)
    torch.testing.assert_close(grid, torch.cat([geometry_grid(_slice(pg, i), 40, 40) for i in range(5)]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("size", [(37, 45), (7, 70)], ids=["37x45", "7x70"])
def test_appearance_matches_the_reference_formulas(device, selection, dtype, size):
    g = torch.Generator().manual_seed(1)
    n = 7
    x = noncontiguous(torch.rand(n, 3, *size, generator=g, dtype=dtype)).to(device)
    p = {k: v.to(device) for k, v in sample_appearance(n, CFG, g).items()}
    p["gray"] = torch.tensor([True, False, False, True, False, False, True], device=device)
    p["blur"] = torch.tensor([True, True, False, False, True, False, True], device=device)
    assert_close(apply_appearance(x, p), apply_appearance_reference(x, p))


def test_hue_rotation_matches_hsv_over_the_whole_circle(selection):
    """Rotations up to half a turn either way, on random colours and on the pixels where the textbook formula
    branches: gray levels (no hue), two channels tied for the maximum or the minimum, black and white."""
    g = torch.Generator().manual_seed(2)
    special = torch.tensor([[0.5, 0.5, 0.5], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.8, 0.8, 0.1], [0.1, 0.8, 0.8],
                            [0.8, 0.1, 0.8], [0.2, 0.2, 0.9], [0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [1.0, 0.0, 0.0],
                            [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.5, 0.0], [0.3, 0.0, 1.0]], dtype=torch.float64)
    pixels = torch.cat([special, torch.rand(50, 3, generator=g, dtype=torch.float64)])  # 64 pixels, 8 x 8
    hues = torch.tensor([-0.5, -0.37, -1 / 6, -0.1, -1e-3, 0.0, 0.05, 1 / 6, 0.25, 0.5], dtype=torch.float64)
    x = pixels.T.reshape(1, 3, 8, 8).expand(len(hues), 3, 8, 8)
    p = _params(len(hues), hue=hues)
    out = apply_appearance(x, p)
    expected = apply_appearance_reference(x, p)
    assert_close(out, expected)
    assert_close(out[hues == 0], x[hues == 0])


@pytest.mark.parametrize("sigma", [0.1, 0.44, 1.0, 2.0])
@pytest.mark.parametrize("size", [(7, 7), (33, 40), (70, 96)], ids=["7x7", "33x40", "70x96"])
def test_blur_matches_the_convolution_reference(device, selection, sigma, size):
    """Sizes around the 32-sample tiles of the blur's matrix products (a window of one tile reflects at both
    ends at 7 px); sigma 0.44 makes the outer taps subnormal numbers, which the batched blur drops."""
    x = torch.rand(3, 3, *size, dtype=torch.float64, device=device)
    p = _params(3, device, blur=True, sigma=sigma)
    assert_close(apply_appearance(x, p), blur_reference(x, p["sigma"]))


@pytest.mark.parametrize("size", [(40, 40), (100, 72)], ids=["lattice", "resized"])
def test_geometry_grid_matches_the_per_image_solve(device, size):
    p = {k: v.to(device) for k, v in sample_geometry(9, CFG, torch.Generator().manual_seed(3)).items()}
    for dtype in (torch.float64, torch.float32):
        assert_close(geometry_grid(p, *size, dtype), geometry_grid_reference(p, *size, dtype))


CONFIGS = {"all": CFG, "no-appearance": AugmentConfig(appearance=False),
           "no-geometry": AugmentConfig(geometric=False), "flip-only": AugmentConfig(appearance=False,
                                                                                      geometric=False)}


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_augment_pair_matches_the_reference_formulas_for_the_same_draws(device, selection, cfg):
    """The same generator draws the same flips, appearance and warps in both; images larger than the 64 x 64
    lattice exercise the grid's resize."""
    photo = torch.rand(6, 3, 72, 80, dtype=torch.float64, device=device)
    sketch = torch.rand(6, 3, 72, 80, dtype=torch.float64, device=device)
    out = augment_pair(photo, sketch, cfg, torch.Generator(device=device).manual_seed(5))
    ref = augment_pair_reference(photo, sketch, cfg, torch.Generator(device=device).manual_seed(5))
    for a, b in zip(out, ref):
        assert_close(a, b)
    out = augment_pair(photo.float(), sketch.float(), cfg, torch.Generator(device=device).manual_seed(6))
    ref = augment_pair_reference(photo.float(), sketch.float(), cfg, torch.Generator(device=device).manual_seed(6))
    for a, b in zip(out[:1] + out[2:], ref[:1] + ref[2:]):
        assert_close(a, b)
    # a flipped sketch is sampled at -x in the unflipped one: in float32 that pixel position rounds ~1e-5 px
    # differently, and these noise images change by up to 1 per pixel
    torch.testing.assert_close(out[1], ref[1], rtol=0, atol=1e-4)


@pytest.mark.parametrize("cfg", CONFIGS.values(), ids=CONFIGS.keys())
def test_augment_pair_leaves_its_inputs_unchanged(selection, cfg):
    photo, sketch = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    p0, s0 = photo.clone(), sketch.clone()
    augment_pair(photo, sketch, dataclasses.replace(cfg, flip_p=1.0), torch.Generator().manual_seed(0))
    assert torch.equal(photo, p0) and torch.equal(sketch, s0)


def test_outputs_stay_in_the_unit_interval():
    cfg = AugmentConfig(brightness=0.9, contrast=0.9, saturation=0.9, hue=0.5)
    g = torch.Generator().manual_seed(7)
    photo = torch.rand(16, 3, 24, 24, generator=g).round()  # 0 and 1: every clamp is reached
    sketch = torch.rand(16, 3, 24, 24, generator=g)
    for out in augment_pair(photo, sketch, cfg, g)[:2]:
        assert 0 <= out.min() and out.max() <= 1


def test_no_host_synchronisation_off_the_cpu():
    """Meta tensors have no values: a host synchronisation (an index, an .item(), a bool of a tensor) raises."""
    photo, sketch = torch.rand(4, 3, 80, 72, device="meta"), torch.rand(4, 3, 80, 72, device="meta")
    outs = augment_pair(photo, sketch)
    assert [tuple(o.shape) for o in outs] == [(4, 3, 80, 72), (4, 3, 80, 72), (4, 80, 72, 2)]
    assert augment_images(photo).shape == photo.shape


def test_bad_images_raise_a_clear_error():
    with pytest.raises(ValueError, match=r"augment_pair: sketch must be a floating-point batch of RGB images"):
        augment_pair(torch.rand(2, 3, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match=r"augment_pair: photo and sketch must hold the same number of images"):
        augment_pair(torch.rand(2, 3, 16, 16), torch.rand(3, 3, 16, 16))
    with pytest.raises(ValueError, match=r"augment_images: x must be a floating-point batch"):
        augment_images(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match=r"apply_appearance: x must be"):
        apply_appearance(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), _params(1))
    with pytest.raises(ValueError, match=r"13-tap blur .* at least 7 x 7, got 6 x 9"):
        apply_appearance(torch.rand(1, 3, 6, 9), _params(1, blur=True))
    # without colour jitter any channel count warps, and an image the blur skips may be small
    assert augment_pair(torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6), AugmentConfig(appearance=False))[1].shape \
        == (2, 1, 6, 6)
    assert apply_appearance(torch.rand(1, 3, 6, 9), _params(1)).shape == (1, 3, 6, 9)


def test_parameter_distributions():
    g = torch.Generator().manual_seed(0)
    n = 6000
    a, geo = sample_appearance(n, CFG, g), sample_geometry(n, CFG, g)
    assert abs(a["gray"].float().mean() - 0.2) < 0.03 and abs(a["blur"].float().mean() - 0.5) < 0.03
    assert 0.1 <= a["sigma"].min() and a["sigma"].max() <= 2.0
    assert a["brightness"].min() >= 0.6 and a["brightness"].max() <= 1.4 and abs(a["brightness"].mean() - 1) < 0.02
    assert a["hue"].abs().max() <= 0.1
    counts = torch.bincount(geo["kind"], minlength=3).float() / n
    assert (counts - 1 / 3).abs().max() < 0.03
    assert geo["angle"].abs().max() <= math.pi / 8 and geo["tps"].abs().max() <= 0.25
    assert geo["scale"].min() >= 0.5 and geo["scale"].max() <= 1.5 and geo["translate"].abs().max() <= 0.5


def test_batched_and_reference_loop_outputs_have_the_same_statistics():
    torch.manual_seed(5)
    photo, sketch = torch.rand(24, 3, 32, 32), torch.rand(24, 3, 32, 32)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    b = augment_pair(photo, sketch, CFG, g1)
    r = augment_reference(photo, sketch, CFG, g2)
    for x, y in zip(b, r):
        assert x.shape == y.shape
    for x, y in zip(b[:2], r[:2]):
        assert abs(x.mean() - y.mean()) < 0.05 and abs(x.std() - y.std()) < 0.05
    assert abs(b[2].std() - r[2].std()) < 0.15


def test_identity_when_disabled():
    off = AugmentConfig(flip_p=0.0, appearance=False, geometric=False)
    photo, sketch = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    p, s, grid = augment_pair(photo, sketch, off)
    assert torch.equal(p, photo) and torch.equal(s, sketch)
    assert torch.equal(grid, identity_grid(3, 32, 32))


def test_pair_flip_flips_both_images(selection):
    photo = torch.rand(64, 3, 8, 8)
    cfg = AugmentConfig(appearance=False, geometric=False)
    p, s, _ = augment_pair(photo, photo.clone(), cfg, torch.Generator().manual_seed(0))
    flipped = (p != photo).flatten(1).any(1)
    assert torch.equal(p, s) and 15 < int(flipped.sum()) < 49
    assert torch.equal(p[flipped], photo[flipped].flip(-1))


def test_tps_interpolates_its_control_points():
    jitter = torch.rand(3, 16, 2) * 0.5 - 0.25
    ctrl = identity_grid(1, 4, 4).reshape(1, 16, 2).expand(3, 16, 2)
    torch.testing.assert_close(tps_points(ctrl, jitter), ctrl + jitter, atol=1e-4, rtol=0)


def test_affine_grid_is_the_drawn_map():
    p = sample_geometry(1, CFG)
    p["kind"][:] = 0
    p["angle"][:], p["shear"][:] = math.pi / 2, 0.0
    p["scale"][:] = torch.tensor([[2.0, 1.0]])
    p["translate"][:] = torch.tensor([[0.1, -0.2]])
    grid = geometry_grid(p, 5, 5)
    # output (x, y) samples rot90 @ diag(2, 1) @ (x, y) + t = (-y + 0.1, 2 x - 0.2)
    ident = identity_grid(1, 5, 5)
    expected = torch.stack((-ident[..., 1] + 0.1, 2 * ident[..., 0] - 0.2), -1)
    torch.testing.assert_close(grid, expected, atol=1e-5, rtol=0)


def test_returned_grid_reproduces_the_augmented_sketch(selection):
    """A ramp image (x, y coordinates as colours) warped by the returned grid reads back the grid itself,
    flipped pairs included."""
    n, s = 6, 48
    ramp = identity_grid(n, s, s).permute(0, 3, 1, 2)
    sketch = torch.cat([ramp, torch.zeros(n, 1, s, s)], 1) * 0.5 + 0.5
    for flip_p in (0.0, 1.0):
        cfg = AugmentConfig(flip_p=flip_p, appearance=False)
        _, warped, grid = augment_pair(torch.zeros_like(sketch), sketch, cfg, torch.Generator().manual_seed(3))
        mirrored = grid.clamp(-1, 1) * torch.tensor([1.0 - 2 * flip_p, 1.0])
        torch.testing.assert_close(warped[:, :2] * 2 - 1, mirrored.permute(0, 3, 1, 2), atol=1e-5, rtol=0)
        resampled = F.grid_sample(sketch.flip(-1) if flip_p else sketch, grid, padding_mode="border",
                                  align_corners=True)
        torch.testing.assert_close(warped, resampled)
    full = geometry_grid(sample_geometry(n, CFG, torch.Generator().manual_seed(3)), 256, 256, coarse=256)
    coarse = geometry_grid(sample_geometry(n, CFG, torch.Generator().manual_seed(3)), 256, 256)
    assert (full - coarse).abs().max() < 2e-3  # the coarse lattice is < 0.26 px off at 256 px
