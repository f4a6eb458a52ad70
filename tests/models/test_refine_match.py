"""The local match start of a refinement level (pscfast.models.refine, ``match_temperature``): it recovers a known
sub-cell shift that the upsampled flow misses, the network's residual adds to it, and checkpoints keep its
settings (and record none for levels without it)."""
import pytest
import torch
import torch.nn.functional as F

from pscfast.models import PSCNet, load_checkpoint, save_checkpoint
from pscfast.models.refine import RefineLevel
from pscfast.ops import _reference as ref
from pscfast.training import TrainConfig
from pscfast.training.pipeline import refine_levels
from tests.utils import assert_close

SIZE = 32
SHIFT = (1.4, -0.6)  # (x, y) cells of the 32x32 grid: off the integer displacements


def _shifted_maps(seed: int = 0):
    """A smooth random source map at the level's size and the target that sees it SHIFT cells away:
    tgt(p) = src(p + SHIFT), so the true flow is the identity plus SHIFT."""
    g = torch.Generator().manual_seed(seed)
    src = F.interpolate(torch.randn(1, 16, 8, 8, generator=g), size=(SIZE, SIZE), mode="bicubic", align_corners=True)
    true = ref.identity_grid(1, SIZE, SIZE) + torch.tensor(SHIFT) * (2 / (SIZE - 1))
    tgt = F.grid_sample(src, true, mode="bilinear", padding_mode="border", align_corners=True)
    return {4: src}, {4: tgt}, true


def _error_in_cells(flow, true, margin=3):
    """Mean end-point error in cells, away from the border (where the target repeats the edge)."""
    err = ((flow - true) * ((SIZE - 1) / 2)).norm(dim=-1)
    return err[:, margin:-margin, margin:-margin].mean().item()


@pytest.mark.parametrize("median", [0, 3, 5])
def test_the_match_start_recovers_a_sub_cell_shift_the_upsampled_flow_misses(median):
    src, tgt, true = _shifted_maps()
    coarse = ref.identity_grid(1, 16, 16)  # the 16x16 flow knows nothing of the shift
    plain = RefineLevel(SIZE, max_displacement=3)(coarse, src, tgt)  # untrained: the upsampled flow
    matched = RefineLevel(SIZE, max_displacement=3, match_temperature=0.02, match_median=median)(coarse, src, tgt)
    before, after = _error_in_cells(plain, true), _error_in_cells(matched, true)
    assert before == pytest.approx((SHIFT[0] ** 2 + SHIFT[1] ** 2) ** 0.5, rel=1e-4)
    assert after < 0.25 * before, (before, after)
    # sub-cell: better than the nearest integer displacement, (1, -1), would be
    assert after < 0.75 * ((SHIFT[0] - 1) ** 2 + (SHIFT[1] + 1) ** 2) ** 0.5


def test_the_window_keeps_a_distant_second_peak_out():
    """Two equal peaks 4 cells apart: the windowed soft-argmax stays at the first (the argmax), a plain
    soft-argmax would land between them."""
    level = RefineLevel(8, max_displacement=3, match_temperature=0.02, match_window=1.0)
    cost = torch.full((1, 49, 8, 8), -1.0)
    cost[:, 3 * 7 + 1] = 1.0  # displacement (-2, 0)
    cost[:, 3 * 7 + 5] = 1.0  # displacement (2, 0)
    offsets = level.match_offsets(cost)
    torch.testing.assert_close(offsets[..., 0], torch.full((1, 8, 8), -2.0), atol=2e-3, rtol=0)
    torch.testing.assert_close(offsets[..., 1], torch.zeros(1, 8, 8), atol=1e-6, rtol=0)
    wide = RefineLevel(8, max_displacement=3, match_temperature=0.02, match_window=100.0).match_offsets(cost)
    torch.testing.assert_close(wide, torch.zeros(1, 8, 8, 2), atol=1e-3, rtol=0)


def test_the_network_adds_its_residual_to_the_match():
    src, tgt, _ = _shifted_maps()
    coarse = ref.identity_grid(1, 16, 16)
    level = RefineLevel(SIZE, max_displacement=3, match_temperature=0.02)
    start = level(coarse, src, tgt)
    level.net[-1].bias.data = torch.tensor([1.0, -2.0])
    assert_close(level(coarse, src, tgt) - start, torch.tensor([2 / 31, -4 / 31]).expand(1, SIZE, SIZE, 2))


def test_checkpoints_keep_the_match_settings(tmp_path):
    torch.manual_seed(0)
    levels = [{"size": 32, "strides": [4, 8], "max_displacement": 2, "match_temperature": 0.05,
               "match_window": 1.5, "match_median": 5}]
    model = PSCNet("efficientnet_lite0", refine=levels).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.refine.config == [{**levels[0], "width": 64}]
    level = loaded.refine.levels[0]
    assert (level.match_temperature, level.match_window, level.match_median) == (0.05, 1.5, 5)
    x, y = torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96)
    for a, b in zip(loaded.predict_flow(x, y), model.predict_flow(x, y)):
        assert torch.equal(a, b)
    # without the match start a level records exactly what it did before the setting existed
    assert PSCNet("efficientnet_lite0", refine=[{"size": 32}]).refine.config == [
        {"size": 32, "strides": [4], "max_displacement": 4, "width": 64}]


def test_the_training_config_turns_it_on():
    assert "match_temperature" not in refine_levels(TrainConfig(refine_match=False))[0]
    default = refine_levels(TrainConfig())[0]  # the default run's level
    assert default["match_temperature"] == 0.1 and default["match_median"] == 5 and default["strides"] == [4, 8]
    cfg = TrainConfig(refine_match=True, refine_match_temperature=0.1, refine_match_window=2.0,
                      refine_match_median=3, refine_sizes=(32, 64))
    assert [level["match_temperature"] for level in refine_levels(cfg)] == [0.1, 0.1]
    assert refine_levels(cfg)[1]["match_window"] == 2.0 and refine_levels(cfg)[1]["match_median"] == 3


@pytest.mark.parametrize("kw", [dict(match_temperature=0.0), dict(match_temperature=0.02, match_window=-1.0)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError, match="RefineLevel: match_temperature .* must be positive"):
        RefineLevel(**kw)
    with pytest.raises(ValueError, match="refine_match_temperature must be positive"):
        TrainConfig(refine_match_temperature=0.0)


@pytest.mark.parametrize("median", [4, -1, True])
def test_a_median_of_even_or_negative_side_is_refused(median):
    with pytest.raises(ValueError, match="RefineLevel: match_median must be an odd side, or 0 for none"):
        RefineLevel(match_temperature=0.02, match_median=median)
    if not isinstance(median, bool):
        with pytest.raises(ValueError, match="refine_match_median must be an odd side, or 0 for none"):
            TrainConfig(refine_match_median=median)
