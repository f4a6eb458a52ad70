"""The synthetic benchmark: deterministic by seed, atomic output, deformation and ground truth consistent."""
import os
import stat

import numpy as np
import pytest
from PIL import Image

from pscfast.data import synthetic
from pscfast.data.deform import Deformation

SMALL = dict(classes=("house",), photos_per_class=2, sketches_per_photo=1, test_photos_per_class=1)


def _files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out


def test_deterministic_by_seed(tmp_path):
    synthetic.generate(str(tmp_path / "a"), seed=5, **SMALL)
    synthetic.generate(str(tmp_path / "b"), seed=5, **SMALL)
    synthetic.generate(str(tmp_path / "c"), seed=6, **SMALL)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert len([k for k in a if k.endswith(".jpg")]) == 2
    for k in a:
        if k.endswith(".npz"):
            za, zb = np.load(tmp_path / "a" / k), np.load(tmp_path / "b" / k)
            assert all(np.array_equal(za[n], zb[n]) for n in za.files)
        else:
            assert a[k] == b[k], k
    assert a["test_pairs_ps.csv"] != c["test_pairs_ps.csv"]


def test_layout_and_images(tiny_root):
    for kind, ext in (("photo", ".jpg"), ("sketch", "-1.png"), ("mask", ".png"), ("sketch_mask", "-2.png")):
        path = os.path.join(tiny_root, synthetic.PREFIX, kind, synthetic.TX, "fish", "fish_0000" + ext)
        im = Image.open(path)
        assert im.size == (256, 256)
    base = os.path.join(tiny_root, synthetic.PREFIX, "{}", synthetic.TX, "fish", "fish_0000{}")
    photo = np.asarray(Image.open(base.format("photo", ".jpg")))
    sketch = np.asarray(Image.open(base.format("sketch", "-1.png")))
    assert photo.std() > 20  # colour, texture, clutter
    ink = (sketch < 128).mean()
    assert 0.005 < ink < 0.15 and (sketch[sketch >= 128] == 255).all()  # strokes on white paper


def test_refuses_nonempty_and_leaves_nothing_on_error(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        synthetic.generate(str(tmp_path / "full"), **SMALL)
    with pytest.raises(ValueError, match="unknown synthetic class 'unicorn'"):
        synthetic.generate(str(tmp_path / "out"), classes=("house", "unicorn"), photos_per_class=2,
                           test_photos_per_class=1)
    assert sorted(os.listdir(tmp_path)) == ["full"]


@pytest.mark.parametrize("args, words", [
    (["--seed", "-1"], "seed must be a non-negative int, got -1"),
    (["--sketches-per-photo", "0"], "sketches_per_photo must be at least 1"),
    (["--photos-per-class", "3", "--test-photos-per-class", "3"], "test_photos_per_class=3 must be in"),
    (["--classes", "house,unicorn"], "unknown synthetic class 'unicorn'"),
    (["--classes", "fish,house,fish"], "classes: 'fish' listed more than once"),
])
def test_cli_errors_are_one_line(args, words, tmp_path, capsys):
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert os.listdir(tmp_path) == []


def test_repeated_classes_are_refused(tmp_path):
    """A class listed twice would write its images twice over the same paths under two class ids, and the
    ground truth would then score 57.81 instead of 100."""
    with pytest.raises(ValueError, match="classes: 'fish' listed more than once"):
        synthetic.generate(str(tmp_path / "out"), classes=("fish", "fish"), photos_per_class=2, test_photos_per_class=1)
    assert os.listdir(tmp_path) == []


def test_output_folder_gets_the_usual_mode_and_a_file_is_refused(tmp_path, capsys):
    old = os.umask(0o027)
    try:
        synthetic.generate(str(tmp_path / "out"), **SMALL)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out").st_mode) == 0o750  # 0o777 less the umask, not mkdtemp's 0o700
    (tmp_path / "file.csv").write_text("x")
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "file.csv"), "--classes", "house"])
    err = capsys.readouterr().err
    assert "file.csv exists and is not a folder" in err and "Traceback" not in err


def test_deformation_inverse_and_grids():
    d = Deformation.random(np.random.default_rng(11))
    q = np.random.default_rng(2).uniform(0, 255, (500, 2))
    assert np.abs(d.apply(d.inverse(q)) - q).max() < 1e-6
    fwd, bwd = d.grids(16)
    corner = d.inverse(np.array([255.0, 0.0]))  # grid point (row 0, col 15) of the sketch
    assert np.allclose(fwd[0, 15], corner * 2 / 255 - 1, atol=1e-6)
    assert np.allclose(bwd[15, 0], d.apply(np.array([0.0, 255.0])) * 2 / 255 - 1, atol=1e-6)
