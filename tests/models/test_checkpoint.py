"""Checkpoints: the release format (keys and shapes of the authors' TSV), strictness, pscfast's own format."""
import argparse

import pytest
import torch

from pscfast.models import PSCNet, load_checkpoint, save_checkpoint
from pscfast.models.checkpoint import release_to_pscnet
from tests.models.release_recipe import release_keys


def release_state(arch="resnet18", seed=0):
    """A random state dict with exactly the release's keys, shapes and dtypes; norms.1 = norms.0 as in the release."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, (shape, dtype) in release_keys(arch).items():
        if key.startswith("framework.encoder_"):
            continue
        if ".norms.1." in key:
            state[key] = state[key.replace(".norms.1.", ".norms.0.")].clone()
        elif dtype == torch.int64:
            state[key] = torch.randint(0, 100, shape, generator=g)
        else:
            state[key] = torch.rand(shape, generator=g) * 0.1 + (1.0 if "running_var" in key else 0.0)
    for key in release_keys(arch):
        if key.startswith("framework.encoder_"):
            state[key] = state[key[len("framework."):]]
    return state


def test_release_tsv_layout_matches_pscnet_for_every_arch():
    for arch in ("resnet18", "resnet101"):
        model = {k: tuple(v.shape) for k, v in PSCNet(arch).state_dict().items()}
        release = {k.replace("encoder_q.", "encoder.", 1): s for k, (s, _) in release_keys(arch).items()
                   if k.startswith(("encoder_q.", "stn."))}
        assert release == model


def test_release_checkpoint_loads_strictly(tmp_path):
    state = release_state()
    path = tmp_path / "release.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 1500}, path)
    model = load_checkpoint(path)
    assert model.arch == "resnet18" and model.shared_bn and not model.training
    loaded = model.state_dict()
    for k, v in state.items():
        if k.startswith("encoder_q."):
            assert torch.equal(loaded["encoder." + k[len("encoder_q."):]], v), k
        elif k.startswith("stn."):
            assert torch.equal(loaded[k], v), k
    again, config = load_checkpoint(path, with_config=True)  # the release records no training config
    assert config == {} and torch.equal(again.stn.net_4x[0].weight, model.stn.net_4x[0].weight)
    x = torch.rand(1, 3, 64, 64)
    fwd, bwd = model.predict_flow(x, x.flip(-1))
    assert fwd.shape == (1, 16, 16, 2) and torch.isfinite(fwd).all() and torch.isfinite(bwd).all()


def test_release_unknown_and_missing_keys_are_errors():
    state = release_state()
    with pytest.raises(KeyError, match="unexpected.*extra.weight"):
        release_to_pscnet({**state, "extra.weight": torch.zeros(1)}, None, True)
    del state["stn.net_8x.4.bias"]
    with pytest.raises(KeyError, match="missing.*stn.net_8x.4.bias"):
        release_to_pscnet(state, None, True)


def test_release_shapes_and_shared_bn_checked():
    state = release_state()
    state["stn.net_4x.0.bias"] = torch.zeros(3)
    with pytest.raises(ValueError, match="shape"):
        release_to_pscnet(state, None, True)
    state = release_state()
    state["encoder_q.bn1.norms.1.weight"] = state["encoder_q.bn1.norms.1.weight"] + 1
    with pytest.raises(ValueError, match="shared_bn"):
        release_to_pscnet(state, None, True)
    assert not release_to_pscnet(state, None, False).shared_bn


def test_arch_mismatch_and_garbage(tmp_path):
    torch.save(release_state(), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="resnet18, not resnet50"):
        load_checkpoint(tmp_path / "r18.pth", arch="resnet50")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="neither"):
        load_checkpoint(tmp_path / "junk.pth")


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth: no such file"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    with pytest.raises(ValueError, match="image.png is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "image.png")
    torch.save(release_state(), tmp_path / "r18.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "r18.pth").read_bytes()[:4096])
    with pytest.raises(ValueError, match="cut.pth cannot be read as a checkpoint of tensors"):
        load_checkpoint(tmp_path / "cut.pth")
    torch.save({"args": argparse.Namespace(lr=0.1), "state_dict": {}}, tmp_path / "objects.pth")
    with pytest.raises(ValueError, match="objects.pth cannot be read .*argparse.Namespace"):
        load_checkpoint(tmp_path / "objects.pth")


def test_pscfast_format_round_trip(tmp_path):
    torch.manual_seed(3)
    model = PSCNet("resnet18", shared_bn=False)
    for p in model.stn.parameters():
        p.data.normal_(0, 0.01)
    save_checkpoint(tmp_path / "m.pt", model, step=7)
    loaded = load_checkpoint(tmp_path / "m.pt")
    assert load_checkpoint(tmp_path / "m.pt", with_config=True)[1] == {}  # saved without a config
    save_checkpoint(tmp_path / "c.pt", model, config={"image_size": 96, "augment": False})
    assert load_checkpoint(tmp_path / "c.pt", with_config=True)[1] == {"image_size": 96, "augment": False}
    assert not loaded.shared_bn
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    for a, b in zip(model.eval().predict_flow(x, y), loaded.predict_flow(x, y)):
        assert torch.equal(a, b)
