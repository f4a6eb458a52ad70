"""The refinement levels on top of the STN (pscfast.models.refine) and the encoders' maps at any stride: the cost
volume against plain PyTorch, the residual's units, an untrained level's identity, PSCNet's finest flow and its
checkpoints."""
import pytest
import torch
import torch.nn.functional as F

from pscfast.models import PHOTO, SKETCH, EfficientNetLite0, PSCNet, ResNet, load_checkpoint, save_checkpoint
from pscfast.models.refine import RefineLevel, Refinement
from pscfast.models.stn import upsample_flow
from pscfast.ops import _reference as ref
from tests.utils import assert_close, noncontiguous


def _reference_cost(up, src, tgt, size, d):
    """The level's cost volume in plain PyTorch: grid_sample, the reference local correlation, per stride."""
    out = []
    for s in sorted(src):
        t = F.normalize(F.interpolate(tgt[s], size=(size, size), mode="bilinear", align_corners=False), dim=1)
        w = F.normalize(F.grid_sample(src[s], up, mode="bilinear", padding_mode="zeros", align_corners=True), dim=1)
        out.append(ref.local_correlation(t, w, patch_size=2 * d + 1))
    return torch.cat(out, 1)


def test_cost_volume_equals_plain_pytorch():
    """Random maps of odd sizes, one non-contiguous, two strides, a flow off the identity."""
    torch.manual_seed(0)
    src = {4: torch.randn(2, 5, 13, 11), 8: noncontiguous(torch.randn(2, 3, 7, 6))}
    tgt = {4: torch.randn(2, 5, 13, 11), 8: torch.randn(2, 3, 7, 6)}
    level = RefineLevel(size=9, strides=(4, 8), max_displacement=2)
    up = ref.identity_grid(2, 9, 9) + 0.2 * torch.randn(2, 9, 9, 2)
    cost = level.cost(up, src, tgt)
    assert cost.shape == (2, 2 * 25, 9, 9)
    assert_close(cost, _reference_cost(up, src, tgt, 9, 2))


def test_an_untrained_level_returns_the_upsampled_flow():
    torch.manual_seed(0)
    flow = ref.identity_grid(2, 16, 16) + 0.1 * torch.randn(2, 16, 16, 2)
    maps = {4: torch.randn(2, 6, 32, 32)}
    fine = Refinement([{"size": 32}, {"size": 64}])(flow, maps, maps)
    assert fine.shape == (2, 64, 64, 2)
    assert torch.equal(fine, upsample_flow(upsample_flow(flow, 32), 64))


def test_the_residual_is_in_cells_of_the_finer_grid():
    """A network that outputs (1, -2) everywhere moves the flow by one cell right and two up: 2 / (size - 1)
    normalised units per cell (align_corners=True)."""
    level = RefineLevel(size=32)
    last = level.net[-1]
    last.bias.data = torch.tensor([1.0, -2.0])
    flow = ref.identity_grid(1, 16, 16)
    maps = {4: torch.randn(1, 4, 32, 32)}
    step = level(flow, maps, maps) - upsample_flow(flow, 32)
    assert_close(step, torch.tensor([2 / 31, -4 / 31]).expand(1, 32, 32, 2))


def test_level_gradcheck_in_float64():
    """The flow and both images' maps get the gradients of the composed ops (warp, normalisation, local
    correlation, the network), checked numerically."""
    torch.manual_seed(0)
    level = RefineLevel(size=6, max_displacement=1, width=4).double()
    torch.nn.init.normal_(level.net[-1].weight, 0, 0.1)
    flow = (ref.identity_grid(1, 4, 4, dtype=torch.float64) + 0.05 * torch.randn(1, 4, 4, 2, dtype=torch.float64))
    src, tgt = (torch.randn(1, 3, 6, 6, dtype=torch.float64) for _ in range(2))
    inputs = tuple(t.requires_grad_(True) for t in (flow, src, tgt))
    assert torch.autograd.gradcheck(lambda f, s, t: level(f, {4: s}, {4: t}), inputs)


def test_bad_levels_are_refused():
    with pytest.raises(ValueError, match=r"RefineLevel: needs size >= 2.*max_displacement=0"):
        RefineLevel(max_displacement=0)
    with pytest.raises(ValueError, match=r"Refinement: the levels' sizes must increase, got \[64, 32\]"):
        Refinement([{"size": 64}, {"size": 32}])
    with pytest.raises(ValueError, match=r"PSCNet: refine reads strides \[64\], which the resnet18 encoder"):
        PSCNet("resnet18", refine=[{"size": 32, "strides": [64]}])


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "resnet18"])
def test_encoders_expose_every_stride(arch):
    torch.manual_seed(0)
    enc = (EfficientNetLite0() if arch == "efficientnet_lite0" else ResNet(arch)).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = enc.features(x, SKETCH, enc.strides)
    for s, m in zip(enc.strides, maps):
        assert m.shape == (1, enc.stride_dims[s], 64 // s, 64 // s), s
    # any order, a subset, the default (8, 16): each map is the same computation
    for s, m in zip((16, 4), enc.features(x, SKETCH, (16, 4))):
        assert torch.equal(m, maps[enc.strides.index(s)])
    assert all(torch.equal(a, maps[enc.strides.index(s)]) for a, s in zip(enc.features(x, SKETCH), (8, 16)))
    with pytest.raises(ValueError, match=r"features: strides must be a non-empty sequence of 2, 4, 8, 16, 32, "
                                         r"got \(3,\)"):
        enc.features(x, PHOTO, (3,))


def test_encoder_strides_are_the_layers_outputs():
    """Stride 4 of Lite0 is the output of its last stride-4 block (block 2, 24 channels), ResNet's is layer1."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    lite = EfficientNetLite0().eval()
    h = F.relu6(lite._bn0(lite._conv_stem(x), PHOTO))
    for blk in lite._blocks[:3]:
        h = blk(h, PHOTO)
    assert h.shape[1] == 24 and torch.equal(lite.features(x, PHOTO, (4,))[0], h)
    r18 = ResNet("resnet18").eval()
    stem = r18.relu(r18.bn1(r18.conv1(x), PHOTO))
    assert torch.equal(r18.features(x, PHOTO, (2,))[0], stem)
    assert torch.equal(r18.features(x, PHOTO, (4,))[0], r18._run(r18.layer1, r18.maxpool(stem), PHOTO))


def _trained_like(model: PSCNet) -> PSCNet:
    """Non-zero last convolutions, so that the levels move the flow."""
    torch.manual_seed(1)
    for level in model.refine.levels:
        torch.nn.init.normal_(level.net[-1].weight, 0, 0.05)
    return model.eval()


def test_predict_flow_returns_the_finest_flow_and_checkpoints_keep_the_levels(tmp_path):
    torch.manual_seed(0)
    levels = [{"size": 32, "strides": [4, 8], "max_displacement": 3}]
    model = _trained_like(PSCNet("efficientnet_lite0", refine=levels))
    assert model.flow_size == 32 and PSCNet("efficientnet_lite0").flow_size == 16
    x, y = torch.rand(2, 3, 128, 128), torch.rand(2, 3, 128, 128)
    fwd, bwd = model.predict_flow(x, y)
    assert fwd.shape == bwd.shape == (2, 32, 32, 2)
    with torch.no_grad():
        p_x, p_y = model.pyramid(x, PHOTO), model.pyramid(y, SKETCH)
        coarse = model.stn([p_x[8], p_x[16]], [p_y[8], p_y[16]])
    assert not torch.allclose(fwd, upsample_flow(coarse, 32), atol=1e-4)  # the level moved it
    save_checkpoint(tmp_path / "m.pt", model)
    assert torch.load(tmp_path / "m.pt", weights_only=True)["refine"] == model.refine.config
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.refine.config == [{"size": 32, "strides": [4, 8], "max_displacement": 3, "width": 64}]
    for a, b in zip(loaded.predict_flow(x, y), (fwd, bwd)):
        assert torch.equal(a, b)


def test_checkpoints_without_levels_load_as_the_16x16_model(tmp_path):
    save_checkpoint(tmp_path / "plain.pt", PSCNet("resnet18"))
    ckpt = torch.load(tmp_path / "plain.pt", weights_only=True)
    assert ckpt["refine"] == []
    del ckpt["refine"]  # written before the levels existed
    torch.save(ckpt, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt").flow_size == 16
    torch.save({**ckpt, "refine": "32"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: 'refine' must be a list of dicts"):
        load_checkpoint(tmp_path / "bad.pt")
