"""pscfast.evaluation.probe: flows optimised per pair against the stage-2 loss through a frozen encoder."""
import json
import shutil

import pytest
import torch

from pscfast.data import PSCTestPairs
from pscfast.diagnose import main as diagnose_main
from pscfast.evaluation import GroundTruthFlows
from pscfast.evaluation.probe import FlowProbe
from pscfast.models import PSCNet, ResNet, save_checkpoint
from pscfast.ops._reference import identity_grid

SIZE = 128


@pytest.fixture(scope="module")
def pairs(tiny_root):
    data = PSCTestPairs(tiny_root, f"{tiny_root}/test_pairs_ps.csv")
    items = [data[i] for i in range(len(data))]
    photo = torch.stack([it["photo"] for it in items])
    sketch = torch.stack([it["sketch"] for it in items])
    batch = {k: [it[k] for it in items] for k in ("photo_path", "sketch_path")}
    return photo, sketch, batch, GroundTruthFlows(tiny_root)


def _encoder():
    torch.manual_seed(0)
    return ResNet("resnet18")


def test_control_moves_the_flows_toward_the_truth(pairs):
    """With the sketch replaced by the photo under the true deformation, even random features match, so
    optimising the stage-2 loss must bring both flows closer to the true ones than the identity is."""
    photo, sketch, batch, gt = pairs
    probe = FlowProbe(_encoder(), steps=30, lr=0.005, image_size=SIZE, control=gt)
    fwd, bwd = probe(photo, sketch, batch)
    true_fwd, true_bwd = gt(photo, sketch, batch)
    identity = identity_grid(len(photo), 16, 16)
    epe = lambda a, b: (a - b).norm(dim=-1).mean(dim=(1, 2))  # noqa: E731  per pair, normalised units
    assert fwd.shape == bwd.shape == (len(photo), 16, 16, 2) and len(probe.losses) == 30
    for flow, truth in ((fwd, true_fwd), (bwd, true_bwd)):
        gain = epe(identity, truth) - epe(flow, truth)
        # measured: every pair gains in both directions, 0.001-0.034 (means 0.009 and 0.013) of a mean
        # error of ~0.28 at the identity
        assert (gain > 0).sum() >= len(photo) - 1, gain
        assert gain.mean() > 0.002, gain


def test_probe_on_real_pairs_and_zero_steps_is_the_identity(pairs):
    # the loss itself need not fall: the batch-wide weights are recomputed (detached) at every step, and the
    # consistency term starts at 0 at the identity
    photo, sketch, batch, _ = pairs
    probe = FlowProbe(_encoder(), steps=10, image_size=64)
    fwd, bwd = probe(photo[:3], sketch[:3])
    assert len(probe.losses) == 10
    assert not fwd.requires_grad and torch.isfinite(fwd).all() and torch.isfinite(bwd).all()
    assert (fwd - identity_grid(3, 16, 16)).abs().max() > 1e-3  # it moved
    fwd0, bwd0 = FlowProbe(_encoder(), steps=0, image_size=64)(photo[:3], sketch[:3])
    assert torch.equal(fwd0, identity_grid(3, 16, 16)) and torch.equal(bwd0, identity_grid(3, 16, 16))
    assert all(not p.requires_grad for p in probe.encoder.parameters()) and not probe.encoder.training


@pytest.mark.parametrize("kw, match", [({"steps": -1}, "steps"), ({"lr": 0.0}, "lr"),
                                       ({"image_size": 16}, "image_size")])
def test_probe_rejects_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        FlowProbe(_encoder(), **kw)


def test_control_needs_the_batch(pairs):
    photo, sketch, _, gt = pairs
    with pytest.raises(ValueError, match="batch"):
        FlowProbe(_encoder(), steps=1, image_size=64, control=gt)(photo[:1], sketch[:1])


def test_diagnose_cli_probe(tiny_root, tmp_path, capsys):
    out = tmp_path / "probe.json"
    args = ["--data-root", tiny_root, "--checkpoint", "random", "--probe", "--probe-steps", "3", "--image-size", "64"]
    assert diagnose_main(args + ["--control", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["model"] == "probe of random (control)" and r["pairs"] == 6 and 0 <= r["pck10"] <= 1
    assert "PCK@0.10" in capsys.readouterr().out
    checkpoint = tmp_path / "psc.pt"  # a checkpoint's encoder, not the random one
    save_checkpoint(checkpoint, PSCNet())
    ckpt_args = ["--data-root", tiny_root, "--checkpoint", str(checkpoint), "--probe", "--probe-steps", "1",
                 "--image-size", "64", "--json", str(out)]
    assert diagnose_main(ckpt_args) == 0
    assert json.loads(out.read_text())["model"] == f"probe of {checkpoint}"
    no_gt = tmp_path / "no_gt"  # the test CSV without the synthetic ground truth beside it, as real PSC6k
    no_gt.mkdir()
    shutil.copy(f"{tiny_root}/test_pairs_ps.csv", no_gt)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        diagnose_main(args + ["--control", "--csv-dir", str(no_gt)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("pscfast.diagnose: ground-truth flows not found")
    assert err.count("\n") == 1
    for bad, words in ((["--checkpoint", "x.pt", "--control"], "--control goes with --probe or --match"),
                       (["--checkpoint", "x.pt"], "choose a diagnostic: --probe, --match or --mismatch"),
                       (["--checkpoint", "random", "--mismatch"], "--checkpoint random goes with --probe or --match"),
                       (["--checkpoint", "x.pt", "--probe", "--gt"], "unrecognized arguments: --gt"),
                       (["--probe", "--checkpoint", "identity"], "the identity flow looks at no image")):
        with pytest.raises(SystemExit) as e:
            diagnose_main(["--data-root", tiny_root] + bad)
        assert e.value.code == 2 and words in capsys.readouterr().err, bad
