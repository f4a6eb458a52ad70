"""Sketchy/PSC6k loaders on a generated benchmark, and their errors on broken ones."""
import csv
import os

import numpy as np
import pytest
import torch
from PIL import Image

from pscfast.data import (IMAGENET_MEAN, IMAGENET_STD, DatasetError, PSCEvalPairs, PSCTestPairs, PSCTrainPairs,
                          normalize)


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
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
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
