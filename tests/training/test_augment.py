"""Batched augmentation: parameter distributions, batched == per-sample, identity when off, GT grids."""
import math

import torch
import torch.nn.functional as F

from pscfast.ops._reference import identity_grid
from pscfast.training.augment import (AugmentConfig, apply_appearance, augment_pair, augment_reference,
                                      geometry_grid, sample_appearance, sample_geometry, tps_points)

CFG = AugmentConfig()


def _slice(p, i):
    return {k: v[i:i + 1] for k, v in p.items()}


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


def test_pair_flip_flips_both_images():
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


def test_returned_grid_reproduces_the_augmented_sketch():
    """A ramp image (x, y coordinates as colours) warped by the returned grid reads back the grid itself."""
    n, s = 6, 48
    ramp = identity_grid(n, s, s).permute(0, 3, 1, 2)
    sketch = torch.cat([ramp, torch.zeros(n, 1, s, s)], 1) * 0.5 + 0.5
    cfg = AugmentConfig(flip_p=0.0, appearance=False)
    _, warped, grid = augment_pair(torch.zeros_like(sketch), sketch, cfg, torch.Generator().manual_seed(3))
    torch.testing.assert_close(warped[:, :2] * 2 - 1, grid.clamp(-1, 1).permute(0, 3, 1, 2), atol=1e-5, rtol=0)
    resampled = F.grid_sample(sketch, grid, padding_mode="border", align_corners=True)
    torch.testing.assert_close(warped, resampled)
    full = geometry_grid(sample_geometry(n, CFG, torch.Generator().manual_seed(3)), 256, 256, coarse=256)
    coarse = geometry_grid(sample_geometry(n, CFG, torch.Generator().manual_seed(3)), 256, 256)
    assert (full - coarse).abs().max() < 2e-3  # the coarse lattice is < 0.26 px off at 256 px
