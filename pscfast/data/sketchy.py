"""Loaders of Sketchy (Sangkloy et al., SIGGRAPH 2016) with PSC6k's pairs and keypoints (Lu, Wang, Fan, ICML
2023), in the formats of the authors' release.

Layout: `<root>/rendered_256x256/256x256/photo/tx_000100000000/<class>/<id>.jpg` and
`.../sketch/tx_000100000000/<class>/<id>-<k>.png`; the CSVs hold paths relative to `root`.

- `train_pairs_ps.csv`: `photo,sketch,class,flip` (each pair twice, flip 0 and 1).
  `PSCTrainPairs`: one item per distinct photo (CSV order); each access draws one of that photo's rows at
  random (so a random sketch with that row's flip), as the release does.
  `PSCEvalPairs`: same items, first sketch of each photo, never flipped (for pictures during training).
- `test_pairs_ps.csv`: `photo,sketch,class,XA,YA,XB,YB`, A = photo, B = sketch, each keypoint column 8
  `;`-separated floats, 0-based pixels, X = column, Y = row, each within the 256x256 image (0..255, as in
  PSC6k). `PSCTestPairs`: every row.

Items are dicts: `photo`, `sketch` float32 (3, 256, 256) in [0, 1] (not normalised: see `normalize`),
`class_id` (int, 1-based), `index`, `photo_path`, `sketch_path` (as in the CSV); train items add `flip`;
test items add `kp_photo`, `kp_sketch` float32 (8, 2) as (x, y) pixels.
The CSV (UTF-8, with or without a byte-order mark) is validated completely at construction (columns,
numbers, keypoints finite and inside the image, file existence); image decoding errors
(corrupt file, wrong size) are raised when the item is loaded, naming the file and the CSV line.
"""
import csv
import math
import os

import torch
from torch.utils.data import Dataset

from pscfast.data.images import IMAGE_SIZE, DatasetError, decode_rgb

NUM_KEYPOINTS = 8
TRAIN_COLUMNS = ("photo", "sketch", "class", "flip")
TEST_COLUMNS = ("photo", "sketch", "class", "XA", "YA", "XB", "YB")


def _read_rows(csv_path, columns):
    """Yield (line number, dict) for every data row of `csv_path`, checking the header and field count."""
    if not os.path.isfile(csv_path):
        raise DatasetError(f"CSV file not found: {csv_path}")
    name = os.path.basename(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{csv_path} is empty: expected a header {','.join(columns)}")
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DatasetError(f"{csv_path} line 1: header {header} lacks column(s) {missing}; "
                               f"expected {','.join(columns)}")
        pos = {c: header.index(c) for c in columns}
        for fields in reader:
            line = reader.line_num
            if not fields or all(not x.strip() for x in fields):
                continue
            if len(fields) != len(header):
                raise DatasetError(f"{name} line {line}: {len(fields)} fields, expected {len(header)} "
                                   f"({','.join(header)})")
            yield line, {c: fields[i].strip() for c, i in pos.items()}


def _parse_int(value, name, line, where, allowed=None, minimum=None):
    try:
        v = int(value)
    except ValueError:
        raise DatasetError(f"{where} line {line}: column {name!r} = {value!r} is not an integer") from None
    if allowed is not None and v not in allowed:
        raise DatasetError(f"{where} line {line}: column {name!r} = {v}, expected one of {sorted(allowed)}")
    if minimum is not None and v < minimum:
        raise DatasetError(f"{where} line {line}: column {name!r} = {v}, expected >= {minimum} (1-based)")
    return v


def _parse_coords(value, name, line, where):
    parts = [p for p in value.split(";")]
    if len(parts) != NUM_KEYPOINTS:
        raise DatasetError(f"{where} line {line}: column {name!r} holds {len(parts)} keypoint coordinate(s), "
                           f"expected {NUM_KEYPOINTS} ';'-separated numbers")
    try:
        coords = [float(p) for p in parts]
    except ValueError:
        raise DatasetError(f"{where} line {line}: column {name!r} = {value!r} holds a non-number") from None
    for i, v in enumerate(coords, 1):
        if not (math.isfinite(v) and 0 <= v <= IMAGE_SIZE - 1):
            raise DatasetError(f"{where} line {line}: column {name!r}: keypoint {i} = {parts[i - 1].strip()!r} is "
                               f"not a pixel coordinate of the {IMAGE_SIZE}x{IMAGE_SIZE} image (0..{IMAGE_SIZE - 1})")
    return coords


def class_name_of(path):
    """Class folder name of a Sketchy image path (`.../<class>/<file>`)."""
    return os.path.basename(os.path.dirname(path))


class _PairsBase(Dataset):
    columns = TRAIN_COLUMNS

    def __init__(self, root, csv_path, check_files=True):
        if not os.path.isdir(root):
            raise DatasetError(f"Sketchy root not found or not a directory: {root}")
        self.root = root
        self.csv_path = csv_path
        self.csv_name = os.path.basename(csv_path)
        self.rows = []
        names, seen = {}, set()
        for line, r in _read_rows(csv_path, self.columns):
            row = self._parse_row(line, r)
            for key in ("photo", "sketch"):
                if not r[key]:
                    raise DatasetError(f"{self.csv_name} line {line}: column {key!r} is empty")
                if check_files and r[key] not in seen and not os.path.isfile(os.path.join(root, r[key])):
                    raise DatasetError(f"image not found: {os.path.join(root, r[key])} "
                                       f"({self.csv_name} line {line}, column {key!r})")
                seen.add(r[key])
            name = class_name_of(r["photo"])
            if names.setdefault(row["class_id"], name) != name:
                raise DatasetError(f"{self.csv_name} line {line}: class {row['class_id']} is folder {name!r} here "
                                   f"but {names[row['class_id']]!r} on an earlier line")
            self.rows.append(row)
        if not self.rows:
            raise DatasetError(f"{csv_path} has no data rows")
        self.class_names = dict(sorted(names.items()))

    def _parse_row(self, line, r):
        return {"line": line, "photo": r["photo"], "sketch": r["sketch"],
                "class_id": _parse_int(r["class"], "class", line, self.csv_name, minimum=1)}

    def _load(self, row, key):
        return decode_rgb(os.path.join(self.root, row[key]), where=f"{self.csv_name} line {row['line']}")


class PSCTrainPairs(_PairsBase):
    """Training pairs: one item per photo, a random one of its CSV rows (sketch + flip) per access.

    `generator`: optional torch.Generator for the draw (default: torch's global RNG, which DataLoader
    workers seed independently).
    """

    def __init__(self, root, csv, check_files=True, generator=None):
        super().__init__(root, csv, check_files)
        self.generator = generator
        by_photo = {}
        for i, row in enumerate(self.rows):
            by_photo.setdefault(row["photo"], []).append(i)
        self.photos = list(by_photo)
        self.rows_of_photo = [by_photo[p] for p in self.photos]

    def _parse_row(self, line, r):
        row = super()._parse_row(line, r)
        row["flip"] = _parse_int(r["flip"], "flip", line, self.csv_name, allowed={0, 1})
        return row

    def __len__(self):
        return len(self.photos)

    def _pick(self, idx):
        choices = self.rows_of_photo[idx]
        return self.rows[choices[int(torch.randint(len(choices), (1,), generator=self.generator))]]

    def __getitem__(self, idx):
        row = self._pick(idx)
        photo, sketch = self._load(row, "photo"), self._load(row, "sketch")
        if row["flip"]:
            photo, sketch = photo.flip(-1), sketch.flip(-1)
        return {"photo": photo, "sketch": sketch, "class_id": row["class_id"], "index": idx,
                "photo_path": row["photo"], "sketch_path": row["sketch"], "flip": row["flip"]}


class PSCEvalPairs(PSCTrainPairs):
    """Deterministic view of the training CSV: first sketch of each photo, never flipped."""

    def _pick(self, idx):
        return dict(self.rows[self.rows_of_photo[idx][0]], flip=0)


class PSCTestPairs(_PairsBase):
    """Test pairs with keypoints: every CSV row; `kp_photo`, `kp_sketch` float32 (8, 2) as (x, y) pixels."""

    columns = TEST_COLUMNS

    def __init__(self, root, csv, check_files=True, classes=None):
        super().__init__(root, csv, check_files)
        if classes is not None:
            wanted = set(resolve_classes(classes, self.class_names))
            self.rows = [r for r in self.rows if r["class_id"] in wanted]
            self.class_names = {k: v for k, v in self.class_names.items() if k in wanted}

    def _parse_row(self, line, r):
        row = super()._parse_row(line, r)
        xa, ya, xb, yb = (_parse_coords(r[c], c, line, self.csv_name) for c in ("XA", "YA", "XB", "YB"))
        row["kp_photo"] = torch.tensor([xa, ya], dtype=torch.float32).t().contiguous()
        row["kp_sketch"] = torch.tensor([xb, yb], dtype=torch.float32).t().contiguous()
        return row

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, idx):
        row = self.rows[idx]
        return {"photo": self._load(row, "photo"), "sketch": self._load(row, "sketch"),
                "class_id": row["class_id"], "index": idx, "photo_path": row["photo"], "sketch_path": row["sketch"],
                "kp_photo": row["kp_photo"].clone(), "kp_sketch": row["kp_sketch"].clone()}


def resolve_classes(classes, class_names):
    """Map a list of class ids (int or digit strings) or names to 1-based ids; unknown ones raise."""
    by_name = {v: k for k, v in class_names.items()}
    ids = []
    for c in classes:
        if isinstance(c, int) or (isinstance(c, str) and c.isdigit()):
            c = int(c)
            if c not in class_names:
                raise DatasetError(f"class id {c} is not in the CSV (ids: {sorted(class_names)})")
            ids.append(c)
        elif c in by_name:
            ids.append(by_name[c])
        else:
            raise DatasetError(f"unknown class {c!r}; known: {sorted(by_name)}")
    return ids
