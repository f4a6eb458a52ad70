"""predict (any image sizes, picture + flow file), viz pictures, the evaluate CLI."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pscfast._eval_cli as eval_cli_module
import pscfast.predict as predict_module
from pscfast import viz
from pscfast.evaluate import main as evaluate_main
from pscfast.models import PSCNet, save_checkpoint
from pscfast.ops._reference import identity_grid
from pscfast.predict import build_predictor, load_any, main as predict_main, predict_pair

R = "rendered_256x256/256x256"


@pytest.fixture
def odd_pair(tiny_root, tmp_path):
    photo = Image.open(os.path.join(tiny_root, R, "photo/tx_000100000000/car/car_0002.jpg")).resize((300, 220))
    sketch = Image.open(os.path.join(tiny_root, R, "sketch/tx_000100000000/car/car_0002-1.png")).resize((180, 260))
    photo.save(tmp_path / "photo.jpg")
    sketch.save(tmp_path / "sketch.png")
    return str(tmp_path / "photo.jpg"), str(tmp_path / "sketch.png")


def _scaled(kp, src_wh, dst_wh):
    return (np.asarray(kp) + 0.5) / np.asarray(src_wh) * np.asarray(dst_wh) - 0.5


def test_predict_cli_writes_picture_and_flow(odd_pair, tmp_path):
    out = tmp_path / "out" / "fig.png"
    predict_main([*odd_pair, "--checkpoint", "identity", "--out", str(out), "--keypoints", "20,30;150,110;290,200"])
    fig = np.asarray(Image.open(out))
    assert fig.shape[0] == 320 and fig.shape[2] == 3
    assert fig.shape[1] == round(300 * 320 / 220) + 2 * round(180 * 320 / 260) + 2 * 6
    flow = torch.load(str(out).replace(".png", ".flow.pt"))
    assert flow["fwd"].shape == flow["bwd"].shape == (16, 16, 2)
    assert flow["kp_photo"].tolist() == [[20, 30], [150, 110], [290, 200]]
    # identity flow: the same relative position in the sketch, up to the 256-frame rounding (0.5 px there)
    expect = _scaled(flow["kp_photo"], (300, 220), (180, 260))
    assert np.abs(flow["kp_sketch"].numpy() - expect).max() <= 0.5 * 260 / 256 + 1e-6


def test_predict_default_keypoints_come_from_the_sketch(odd_pair):
    shift = torch.tensor([16.0, -8.0]) * 2 / 255  # photo point = sketch point + (16, -8) in the 256 frame
    r = predict_pair(*odd_pair, lambda p, s: (identity_grid(1, 16, 16) + shift, identity_grid(1, 16, 16) - shift))
    assert r["kp_sketch"].shape == (8, 2)
    photo_256 = _scaled(r["kp_photo"], (300, 220), (256, 256))
    sketch_256 = _scaled(r["kp_sketch"], (180, 260), (256, 256))
    assert np.abs(photo_256 - (np.round(sketch_256) + [16, -8])).max() < 1e-3
    assert r["figure"].dtype == np.uint8 and r["figure"].shape[0] == 320


def _fails(main, argv, capsys) -> str:
    """The one line a command line exits 2 with."""
    capsys.readouterr()  # what earlier calls printed (progress bars)
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_predict_rejects_bad_keypoints(odd_pair, tmp_path, capsys):
    base = [*odd_pair, "--checkpoint", "identity", "--out", str(tmp_path / "f.png"), "--keypoints"]
    assert _fails(predict_main, base + ["1,2,3"], capsys).startswith(
        "pscfast.predict: --keypoints '1,2,3': expected 'x,y;x,y;...' pairs")
    assert _fails(predict_main, base + ["1,a"], capsys).startswith(
        "pscfast.predict: --keypoints '1,a': expected 'x,y;x,y;...' numbers")
    assert "keypoint 2 (300, 5) lies outside the 300x220 photo" in _fails(predict_main, base + ["299,219;300,5"],
                                                                          capsys)


def test_parse_keypoints_raises_instead_of_exiting():
    with pytest.raises(ValueError, match=r"--keypoints '1;2': expected 'x,y;x,y;\.\.\.' pairs"):
        predict_module.parse_keypoints("1;2")
    assert predict_module.parse_keypoints("1,2; 3.5,4").tolist() == [[1, 2], [3.5, 4]]


def test_flow_figure_and_warp():
    photo = torch.rand(3, 256, 256)
    sketch = torch.ones(3, 256, 256)
    ident = identity_grid(1, 16, 16)[0]
    arr = viz.flow_figure(photo, sketch, ident, ident)
    assert arr.shape == (256, 3 * 256 + 12, 3) and arr.dtype == np.uint8
    batch = viz.batch_figure(photo.expand(3, -1, -1, -1), sketch.expand(3, -1, -1, -1), ident.expand(3, -1, -1, -1),
                             ident.expand(3, -1, -1, -1), n=2)
    assert batch.shape == (512, 3 * 256 + 12, 3) and np.array_equal(batch[:256], arr)
    assert torch.allclose(viz.warp_image(photo, ident), photo, atol=1e-4)  # float32 grid rounding
    flipped = ident * torch.tensor([-1.0, 1.0])  # samples x mirrored
    assert torch.allclose(viz.warp_image(photo, flipped), photo.flip(-1), atol=1e-4)
    # the warped panel of a blank sketch is the photo itself, apart from the drawn points
    assert np.median(np.abs(arr[:, -256:].astype(int) - viz.to_uint8(photo).astype(int))) <= 1


def test_evaluate_cli(tiny_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert evaluate_main(["--data-root", tiny_root, "--gt", "--json", str(out), "--classes", "car,fish"]) == 0
    r = json.loads(out.read_text())
    assert r["pck10"] >= 0.99 and r["identity"]["pck10"] < r["pck10"] and r["pairs"] == 4
    assert set(r["per_class"]) == {"car", "fish"}
    assert "PCK@0.05" in capsys.readouterr().out
    preds = tmp_path / "gt.pt"
    assert evaluate_main(["--data-root", tiny_root, "--gt", "--save-predictions", str(preds)]) == 0
    assert evaluate_main(["--data-root", tiny_root, "--checkpoint", "identity", "--compare", str(preds),
                          "--json", str(out)]) == 0
    r_id = json.loads(out.read_text())
    # ground truth vs identity: as far apart as the identity is from the annotations (GT = annotations)
    assert abs(r_id["consistency_with"]["value"] - r_id["consistency"]) < 0.005
    bad = tmp_path / "bad.json"
    err = _fails(evaluate_main, ["--data-root", str(tmp_path / "missing"), "--gt", "--json", str(bad)], capsys)
    assert not bad.exists() and err.startswith("pscfast.evaluate: ") and "root not found" in err


def test_identity_predictor_shapes():
    fwd, bwd = build_predictor("identity")(torch.zeros(2, 3, 256, 256), None)
    assert fwd.shape == bwd.shape == (2, 16, 16, 2)


def test_flow_figure_marks_the_true_positions():
    photo, sketch = torch.rand(3, 256, 256), torch.ones(3, 256, 256)
    ident = identity_grid(1, 16, 16)[0]
    kp_photo = np.array([[60.0, 60.0], [190.0, 120.0]])
    truth = np.array([[100.0, 60.0], [190.0, 200.0]])  # 40 and 80 px from where the identity flow puts them
    plain = viz.flow_figure(photo, sketch, ident, ident, kp_photo)
    marked = viz.flow_figure(photo, sketch, ident, ident, kp_photo, truth)
    sketch_panel = slice(256 + 6, 2 * 256 + 6)
    changed = np.any(marked[:, sketch_panel] != plain[:, sketch_panel], axis=2)
    for (u, v), colour in zip(truth, viz.colours(2)):
        ring = marked[int(v) - 10:int(v) + 11, sketch_panel][:, int(u) - 10:int(u) + 11].reshape(-1, 3)
        assert any(tuple(p) == colour for p in ring)          # a ring in the keypoint's colour at the truth
    assert changed[60, 85] and changed[160, 190]              # the error lines between predictions and truths
    assert not changed[30, 160]                               # and nothing elsewhere
    # the photo and warped panels do not change
    assert np.array_equal(marked[:, :256], plain[:, :256]) and np.array_equal(marked[:, -256:], plain[:, -256:])


def test_predict_reads_transparent_sketches_as_strokes_on_white(tmp_path):
    ink = np.full((120, 90), 255, np.uint8)
    ink[30:34, 10:80] = 0
    Image.fromarray(np.dstack([np.zeros((120, 90, 3), np.uint8), 255 - ink]), "RGBA").save(tmp_path / "s.png")
    full, small = load_any(str(tmp_path / "s.png"))
    assert np.array_equal(full, np.repeat(ink[..., None], 3, 2))
    assert small.shape == (3, 256, 256) and small.mean() > 0.9


def test_predict_errors_are_one_line_and_found_before_the_model_runs(odd_pair, tmp_path, monkeypatch, capsys):
    def no_model(*args, **kw):
        raise AssertionError("the model was built before the arguments were checked")
    monkeypatch.setattr(predict_module, "build_predictor", no_model)
    for out, words in (("fig.xyz", r"fig\.xyz: the extension '\.xyz' names no picture format that PIL writes"),
                       ("fig", r"fig: no file extension; use \.png or \.jpg"),
                       ("fig.png", r"fig\.png is a folder; give a file name")):
        (tmp_path / "fig.png").mkdir(exist_ok=True)
        err = _fails(predict_main, [*odd_pair, "--checkpoint", "identity", "--out", str(tmp_path / out)], capsys)
        assert re.match(rf"pscfast\.predict: --out: .*{words}", err), err
    if not torch.cuda.is_available():
        err = _fails(predict_main, [*odd_pair, "--checkpoint", "x.pt", "--out", str(tmp_path / "f.png"), "--device",
                                    "cuda"], capsys)
        assert "--device: 'cuda' requested but no CUDA device is available here" in err
    monkeypatch.undo()
    err = _fails(predict_main, [*odd_pair, "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "f.png")],
                 capsys)
    assert re.match(r"pscfast\.predict: pscfast\.models\.load_checkpoint: .*nope\.pt: no such file", err), err
    assert sorted(os.listdir(tmp_path)) == ["fig.png", "photo.jpg", "sketch.png"]


def test_evaluate_checks_its_outputs_and_compare_file_first(tiny_root, tmp_path, monkeypatch, capsys):
    def no_evaluation(*args, **kw):
        raise AssertionError("evaluated before the arguments were checked")
    monkeypatch.setattr(eval_cli_module, "evaluate", no_evaluation)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    save_checkpoint(tmp_path / "model.pt", PSCNet("resnet18"), training={"stage": 2})
    base = ["--data-root", tiny_root, "--gt"]
    for extra, words in ((["--json", str(tmp_path / "dir")], r"--json: .*dir is a folder; give a file name"),
                         (["--save-predictions", str(tmp_path / "file" / "p.pt")], r"file is a file, not a folder"),
                         (["--compare", str(tmp_path / "model.pt")],
                          r"--compare: .*model\.pt is not a predictions file written by --save-predictions \(it holds "
                          r"keys \[[^]]*'model'[^]]*\], not \['photo_to_sketch', "
                          r"'sketch_to_photo'\]\)"),
                         (["--compare", str(tmp_path / "file")], r"file is not a PyTorch checkpoint")):
        with pytest.raises(SystemExit) as info:
            evaluate_main(base + extra)
        err = capsys.readouterr().err
        assert info.value.code == 2 and re.search(words, err) and "Traceback" not in err, err
    assert sorted(os.listdir(tmp_path)) == ["dir", "file", "model.pt"]  # nothing written, no .tmp left
    monkeypatch.undo()
    preds = tmp_path / "few.pt"
    assert evaluate_main(base + ["--classes", "car", "--save-predictions", str(preds)]) == 0
    err = _fails(evaluate_main, base + ["--compare", str(preds)], capsys)  # 2 pairs saved, 6 evaluated
    assert "holds predictions of shape (4, 8, 2), these are (12, 8, 2)" in err


@pytest.mark.parametrize("module, args", [
    ("pscfast.evaluate", ["--data-root", "nowhere", "--gt"]),
    ("pscfast.diagnose", ["--data-root", "nowhere", "--checkpoint", "random", "--match"]),
    ("pscfast.predict", ["nowhere.png", "nowhere.png", "--checkpoint", "identity", "--out", "f.png"]),
])
def test_the_command_lines_run_as_modules_and_exit_with_one_line(module, args, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": root})
    assert proc.returncode == 2 and proc.stderr.startswith(f"{module}: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "nowhere" in proc.stderr and os.listdir(tmp_path) == []
