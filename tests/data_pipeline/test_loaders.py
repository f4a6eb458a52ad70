"""Sketchy/PSC6k loaders on a generated benchmark, and their errors on broken ones."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pscfast.data import (IMAGENET_MEAN, IMAGENET_STD, DatasetError, PSCEvalPairs, PSCTestPairs, PSCTrainPairs,
                          decode_rgb, normalize)


def _pil(root, rel):
    arr = np.asarray(Image.open(os.path.join(root, rel)).convert("RGB"), np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_train_pairs(tiny_root):
    csv_path = os.path.join(tiny_root, "train_pairs_ps.csv")
    rows = _rows(csv_path)
    ds = PSCTrainPairs(tiny_root, csv_path, generator=torch.Generator().manual_seed(0))
    photos = list(dict.fromkeys(r["photo"] for r in rows))
    assert len(ds) == len(photos) == 3 * 2
    assert ds.class_names == {1: "snowman", 2: "fish", 3: "car"}
    seen = set()
    for _ in range(12):
        item = ds[1]
        assert item["photo_path"] == photos[1]
        assert item["photo"].shape == item["sketch"].shape == (3, 256, 256)
        assert item["photo"].dtype == torch.float32 and 0 <= item["photo"].min() and item["photo"].max() <= 1
        assert item["class_id"] == 1
        photo, sketch = _pil(tiny_root, item["photo_path"]), _pil(tiny_root, item["sketch_path"])
        if item["flip"]:
            photo, sketch = photo.flip(-1), sketch.flip(-1)
        assert torch.equal(item["photo"], photo) and torch.equal(item["sketch"], sketch)
        seen.add((item["sketch_path"], item["flip"]))
    assert len(seen) == 4, "every (sketch, flip) row of the photo should be drawn"


def test_eval_pairs_are_fixed_and_unflipped(tiny_root):
    ds = PSCEvalPairs(tiny_root, os.path.join(tiny_root, "train_pairs_ps.csv"))
    a, b = ds[2], ds[2]
    assert a["flip"] == 0 and a["sketch_path"] == b["sketch_path"] and a["sketch_path"].endswith("-1.png")
    assert torch.equal(a["photo"], _pil(tiny_root, a["photo_path"]))


def test_test_pairs_keypoints(tiny_root):
    csv_path = os.path.join(tiny_root, "test_pairs_ps.csv")
    rows = _rows(csv_path)
    ds = PSCTestPairs(tiny_root, csv_path)
    assert len(ds) == len(rows) == 3 * 2
    for i, r in enumerate(rows):
        item = ds[i]
        x = [float(v) for v in r["XB"].split(";")]
        y = [float(v) for v in r["YB"].split(";")]
        assert item["kp_sketch"].shape == (8, 2)
        assert torch.allclose(item["kp_sketch"], torch.tensor([x, y]).t())
        assert item["kp_photo"][:, 0].tolist() == [float(v) for v in r["XA"].split(";")]
        assert item["class_id"] == int(r["class"])
    fish = PSCTestPairs(tiny_root, csv_path, classes=["fish"])
    assert len(fish) == 2 and {fish[i]["class_id"] for i in range(2)} == {2}
    assert len(PSCTestPairs(tiny_root, csv_path, classes=["1", 3])) == 4
    with pytest.raises(DatasetError, match="unknown class 'zebra'"):
        PSCTestPairs(tiny_root, csv_path, classes=["zebra"])


def test_normalize_is_imagenet_mean_std():
    x = torch.rand(2, 3, 8, 8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ref = torch.stack([(x[:, c] - mean[c]) / std[c] for c in range(3)], 1)
    assert (IMAGENET_MEAN, IMAGENET_STD) == (mean, std)
    assert torch.allclose(normalize(x), ref) and torch.allclose(normalize(x[0]), ref[0])
    with pytest.raises(ValueError, match="RGB"):
        normalize(torch.rand(1, 8, 8))


# ---- broken benchmarks ---------------------------------------------------------------------------------
PH = "rendered_256x256/256x256/photo/tx_000100000000/cup/a.jpg"
SK = "rendered_256x256/256x256/sketch/tx_000100000000/cup/a-1.png"
KP = ";".join(["10"] * 8)


def _bench(tmp_path, rows, header="photo,sketch,class,XA,YA,XB,YB", photo_size=(256, 256)):
    for rel, size in ((PH, photo_size), (SK, (256, 256))):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (200, 100, 50)).save(tmp_path / rel)
    path = tmp_path / ("test_pairs_ps.csv" if "XA" in header else "train_pairs_ps.csv")
    path.write_text(header + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return str(tmp_path), str(path)


def test_good_row_loads(tmp_path):
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{KP},{KP},{KP},{KP}"])
    assert PSCTestPairs(root, path)[0]["kp_photo"].eq(10).all()


def test_missing_root_and_csv(tmp_path):
    with pytest.raises(DatasetError, match="root not found.*nope"):
        PSCTestPairs(str(tmp_path / "nope"), str(tmp_path / "x.csv"))
    with pytest.raises(DatasetError, match="CSV file not found"):
        PSCTestPairs(str(tmp_path), str(tmp_path / "x.csv"))


def test_missing_image_names_path_and_line(tmp_path):
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{KP},{KP},{KP},{KP}", f"{PH},{SK[:-4]}x.png,1,{KP},{KP},{KP},{KP}"])
    with pytest.raises(DatasetError, match=r"image not found: .*a-1x\.png \(test_pairs_ps\.csv line 3"):
        PSCTestPairs(root, path)


def test_seven_keypoints(tmp_path):
    seven = ";".join(["1"] * 7)
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{KP},{KP},{KP},{KP}", f"{PH},{SK},1,{KP},{KP},{seven},{KP}"])
    with pytest.raises(DatasetError, match=r"line 3: column 'XB' holds 7 keypoint coordinate\(s\), expected 8"):
        PSCTestPairs(root, path)


@pytest.mark.parametrize("row, message", [
    (f"{PH},{SK},one,{KP},{KP},{KP},{KP}", r"line 2: column 'class' = 'one' is not an integer"),
    (f"{PH},{SK},0,{KP},{KP},{KP},{KP}", r"line 2: column 'class' = 0, expected >= 1"),
    (f"{PH},{SK},1,{KP},{KP},{KP}", r"line 2: 6 fields, expected 7"),
    (f"{PH},{SK},1,{KP},{KP},{KP},1;2;x;4;5;6;7;8", r"line 2: column 'YB' .* non-number"),
])
def test_malformed_rows(tmp_path, row, message):
    root, path = _bench(tmp_path, [row])
    with pytest.raises(DatasetError, match=message):
        PSCTestPairs(root, path)


def test_bad_header_and_flip(tmp_path):
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{KP},{KP},{KP},{KP}"], header="photo,sketch,klass,XA,YA,XB,YB")
    with pytest.raises(DatasetError, match=r"line 1: .*lacks column\(s\) \['class'\]"):
        PSCTestPairs(root, path)
    root, path = _bench(tmp_path, [f"{PH},{SK},1,0", f"{PH},{SK},1,2"], header="photo,sketch,class,flip")
    with pytest.raises(DatasetError, match=r"line 3: column 'flip' = 2, expected one of \[0, 1\]"):
        PSCTrainPairs(root, path)


def test_wrong_size_image(tmp_path):
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{KP},{KP},{KP},{KP}"], photo_size=(300, 200))
    ds = PSCTestPairs(root, path)
    with pytest.raises(DatasetError, match=r"a\.jpg \(test_pairs_ps\.csv line 2\) is 300x200 .*expected 256x256"):
        ds[0]


def test_corrupt_image(tmp_path):
    root, path = _bench(tmp_path, [f"{PH},{SK},1,0", f"{PH},{SK},1,1"], header="photo,sketch,class,flip")
    (tmp_path / SK).write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    ds = PSCTrainPairs(root, path)
    with pytest.raises(DatasetError, match=r"cannot decode image .*a-1\.png \(train_pairs_ps\.csv line [23]\)"):
        ds[0]


@pytest.mark.parametrize("value, shown", [("nan", "'nan'"), ("inf", "'inf'"), ("-1e400", "'-1e400'"),
                                          ("256", "'256'"), ("-0.5", "'-0.5'")])
def test_keypoints_must_be_pixels_of_the_image(tmp_path, value, shown):
    """PSC6k's keypoints lie in 0..255: a nan, an infinity or a point off the image is a broken CSV (it would
    lower PCK silently, or be clamped to the border), named with its file, line, column and keypoint."""
    bad = ";".join(["10"] * 4 + [value] + ["10"] * 3)
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{KP},{KP},{KP},{KP}", f"{PH},{SK},1,{KP},{bad},{KP},{KP}"])
    with pytest.raises(DatasetError, match=rf"test_pairs_ps\.csv line 3: column 'YA': keypoint 5 = {shown} is not "
                                           r"a pixel coordinate of the 256x256 image \(0\.\.255\)"):
        PSCTestPairs(root, path)
    edge = ";".join(["0", "255", "254.5"] + ["10"] * 5)
    root, path = _bench(tmp_path, [f"{PH},{SK},1,{edge},{KP},{KP},{KP}"])
    assert PSCTestPairs(root, path)[0]["kp_photo"][:3, 0].tolist() == [0, 255, 254.5]


def test_a_byte_order_mark_before_the_header_is_accepted(tmp_path):
    root, path = _bench(tmp_path, [f"{PH},{SK},1,0", f"{PH},{SK},1,1"], header="\ufeffphoto,sketch,class,flip")
    assert open(path, "rb").read(3) == b"\xef\xbb\xbf"  # what spreadsheets write at the start of a UTF-8 CSV
    assert len(PSCTrainPairs(root, path)) == 1


def _strokes():
    """(256, 256) uint8: black strokes (0) on white paper (255)."""
    ink = np.full((256, 256), 255, np.uint8)
    ink[40:44, 30:220] = 0
    ink[60:200, 120:123] = 0
    return ink


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_sketches_are_drawn_on_white_paper(tmp_path, mode):
    """Black strokes on transparent paper (the ink only in alpha, as sketch exports often store it) decode as
    the same strokes on white, not as an all-black image."""
    ink = _strokes()
    alpha = 255 - ink
    if mode == "RGBA":
        im = Image.fromarray(np.dstack([np.zeros((256, 256, 3), np.uint8), alpha]), "RGBA")
    elif mode == "LA":
        im = Image.fromarray(np.dstack([np.zeros_like(ink), alpha]), "LA")
    else:  # palette: both entries black, index 0 (the paper) transparent
        im = Image.fromarray((ink == 0).astype(np.uint8), "P")
        im.putpalette([0] * 768)
        im.info["transparency"] = 0
    im.save(tmp_path / "sketch.png")
    expect = torch.from_numpy(ink.astype(np.float32) / 255).expand(3, -1, -1)
    assert torch.equal(decode_rgb(str(tmp_path / "sketch.png")), expect)


def test_sixteen_bit_and_float_images_are_scaled(tmp_path):
    ink = _strokes()
    Image.fromarray(ink.astype(np.uint16) * 257).save(tmp_path / "sketch16.png")  # 255 -> 65535
    Image.fromarray(ink.astype(np.float32) / 255, "F").save(tmp_path / "sketch.tif")
    expect = torch.from_numpy(ink.astype(np.float32) / 255).expand(3, -1, -1)
    for name in ("sketch16.png", "sketch.tif"):
        assert Image.open(tmp_path / name).mode in ("I;16", "F")
        assert torch.equal(decode_rgb(str(tmp_path / name)), expect), name
    Image.fromarray(ink.astype(np.float32), "F").save(tmp_path / "scale255.tif")
    with pytest.raises(DatasetError, match=r"scale255\.tif is a float image with values in \[0, 255\], expected "
                                           r"\[0, 1\]"):
        decode_rgb(str(tmp_path / "scale255.tif"))


@pytest.mark.parametrize("limit", [3000, 1000])
def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch, limit):
    """PIL warns above MAX_IMAGE_PIXELS and raises above twice that; both become the loader's error."""
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DatasetError, match=r"image .*big\.png \(test_pairs_ps\.csv line 7\) is refused as a possible "
                                           r"decompression bomb: Image size \(4096 pixels\) exceeds limit"):
        decode_rgb(str(tmp_path / "big.png"), where="test_pairs_ps.csv line 7", size=None)
