"""Checkpoints: the release format (keys and shapes of the authors' TSV), strictness, pscfast's own format, and
safe writing (atomic, concurrent writers, failed writes, non-finite models)."""
import argparse
import errno
import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from pscfast.models import PSCNet, load_checkpoint, save_checkpoint
from pscfast.models.checkpoint import release_to_pscnet
from tests.models.release_recipe import release_keys
from tests.models.tiny_model import Tiny


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


# ---- writing: atomic, unique temporary files, failures that leave the previous file -------------------------
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _python(code, *args):
    code = "from tests.models.tiny_model import Tiny\n" + textwrap.dedent(code)
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_concurrent_saves_to_one_path_never_share_a_temporary_file(tmp_path):
    """Two processes saving to the same file (two runs given one --out): each save is whole, none fails."""
    path = tmp_path / "m.pt"
    code = """
        import sys
        from pscfast.models import save_checkpoint
        model = Tiny(sys.argv[2])
        print("ready", flush=True)
        sys.stdin.readline()
        for _ in range(200):
            save_checkpoint(sys.argv[1], model)
    """
    procs = [_python(code, path, v) for v in (1, 2)]
    for p in procs:
        assert p.stdout.readline() == "ready\n"
    for p in procs:  # both start saving at once (after importing torch)
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
    assert os.listdir(tmp_path) == ["m.pt"]
    w = torch.load(path, weights_only=True)["model"]["w"]
    assert w.eq(w[0]).all() and float(w[0]) in (1.0, 2.0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_umask()  # the usual mode, not a temp file's 0600


def test_a_failed_write_keeps_the_previous_checkpoint_and_removes_its_temporary_file(tmp_path):
    """A write that the OS refuses part way (here the file-size limit, as a full disk would) raises one line
    naming the file; the previous checkpoint stays and no temporary file is left behind."""
    path = tmp_path / "m.pt"
    save_checkpoint(path, Tiny(1, n=1 << 20))
    code = """
        import resource, signal, sys
        from pscfast.models import save_checkpoint
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        try:
            save_checkpoint(sys.argv[1], Tiny(2, n=1 << 20))
        except OSError as exc:
            print(exc)
    """
    out, err = _python(code, path).communicate(timeout=300)
    assert out.strip() == (f"save_checkpoint: cannot write {path}: File too large; the file there before (if any) "
                           "is unchanged"), err[-2000:]
    assert os.listdir(tmp_path) == ["m.pt"]
    assert torch.load(path, weights_only=True)["model"]["w"].eq(1).all()


def test_a_full_disk_is_named_as_such(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    save_checkpoint(path, Tiny(1))
    real = torch.save

    def disk_full(obj, f):  # what torch.save raises when the file object's write meets ENOSPC
        f.write(b"PK" + bytes(4096))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=rf"^save_checkpoint: cannot write {path}: no space left on device;") as info:
        save_checkpoint(path, Tiny(2))
    assert info.value.errno == errno.ENOSPC
    monkeypatch.setattr(torch, "save", real)
    assert os.listdir(tmp_path) == ["m.pt"] and torch.load(path, weights_only=True)["model"]["w"].eq(1).all()


def test_a_non_finite_model_is_not_saved(tmp_path):
    """A diverged model (the STN's BN running variance overflowed) never replaces a good checkpoint."""
    model = PSCNet("resnet18")
    save_checkpoint(tmp_path / "m.pt", model)
    before = (tmp_path / "m.pt").read_bytes()
    model.stn.net_4x[1].running_var[3] = float("inf")
    with pytest.raises(FloatingPointError, match=r"m\.pt not written: 1 model tensor\(s\) hold non-finite values "
                                                 r"\(stn\.net_4x\.1\.running_var\)"):
        save_checkpoint(tmp_path / "m.pt", model)
    assert (tmp_path / "m.pt").read_bytes() == before and os.listdir(tmp_path) == ["m.pt"]
