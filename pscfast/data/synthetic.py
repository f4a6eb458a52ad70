"""The embedded synthetic benchmark, in Sketchy's layout and the CSV formats of PSC6k's release.

    python -m pscfast.data.synthetic --out DIR [--seed 0] [--classes snowman,fish,...] [--photos-per-class 12]

writes, under DIR (which serves as both the Sketchy root and the CSV directory):
- `rendered_256x256/256x256/photo/tx_000100000000/<class>/<id>.jpg` photos (object + clutter),
  `.../sketch/tx_000100000000/<class>/<id>-<k>.png` sketches (k = 1..sketches_per_photo),
  `.../mask/tx_000100000000/<class>/<id>.png` photo foreground masks,
  `.../sketch_mask/tx_000100000000/<class>/<id>-<k>.png` the same mask carried into the sketch frame;
- `train_pairs_ps.csv` (`photo,sketch,class,flip`, each pair twice) from the first photos of each class,
  `test_pairs_ps.csv` (`photo,sketch,class,XA,YA,XB,YB`) from the last `test_photos_per_class`, 8 keypoints
  per pair sampled over the photo's object and mapped into the sketch through the known deformation;
- `test_pairs_gt.npz`: `fwd`, `bwd` float32 (M, 16, 16, 2), the ground-truth deformation of each test row in
  the release's flow convention (`pscfast.data.deform`), with `photo`, `sketch` (the rows' paths).

Deterministic by seed: every photo draws from its own generator seeded with (seed, class index, photo index).
"""
import argparse
import csv
import os
import secrets
import shutil
import time

import numpy as np
from PIL import Image

from pscfast.data import render, shapes
from pscfast.data.deform import Deformation, pixel_grid

PREFIX = "rendered_256x256/256x256"
TX = "tx_000100000000"
SIZE = 256
MARGIN = 3.0


def _place(parts, rng):
    """Object units -> photo pixels: 60..76 px per unit, rotation +-8 deg, centre 128 +- 10 px."""
    s = rng.uniform(60, 76) * np.array([rng.uniform(0.9, 1.1), 1.0])
    a = np.deg2rad(rng.uniform(-8, 8))
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = (SIZE - 1) / 2 + rng.uniform(-10, 10, 2)
    for part in parts:
        part["pts"] = (part["pts"] * s) @ rot.T + centre
    return parts


def _deformation(parts, kps, rng):
    """A random deformation that keeps every outline and keypoint MARGIN px inside the sketch frame."""
    pts = np.concatenate([render.densify(p["pts"], p["closed"]) for p in parts] + [kps], 0)
    for attempt in range(50):
        d = Deformation.random(rng, strength=1.0 - attempt / 60)
        q = d.apply(pts)
        if q.min() >= MARGIN and q.max() <= SIZE - 1 - MARGIN:
            return d
    raise RuntimeError("could not fit a deformation inside the frame; object too large")


def _sketch_mask(mask, d, n=65):
    """Photo mask carried into the sketch frame: D^-1 on an n x n grid (the field is smooth), bilinearly
    interpolated to every pixel, then a nearest lookup in the photo mask."""
    coarse = d.inverse(pixel_grid(n, SIZE))  # (n, n, 2)
    t = np.arange(SIZE) * (n - 1) / (SIZE - 1)
    i0 = np.minimum(t.astype(int), n - 2)
    f = (t - i0)[:, None]
    rows = coarse[i0] * (1 - f[..., None]) + coarse[i0 + 1] * f[..., None]  # (SIZE, n, 2)
    p = rows[:, i0] * (1 - f[None]) + rows[:, i0 + 1] * f[None]  # (SIZE, SIZE, 2)
    p = np.round(p).astype(int).reshape(-1, 2)
    inside = (p >= 0).all(1) & (p <= SIZE - 1).all(1)
    out = np.zeros(SIZE * SIZE, bool)
    out[inside] = mask[p[inside, 1], p[inside, 0]]
    return out.reshape(SIZE, SIZE)


def _fmt(v):
    return ";".join(f"{x:.3f}" for x in v)


def generate(out_dir, seed=0, classes=shapes.DEFAULT_CLASSES, photos_per_class=12, sketches_per_photo=2,
             test_photos_per_class=4, masks=True):
    """Write the benchmark to `out_dir` (module docstring). Returns a dict of counts.

    The files are written into a temporary folder beside `out_dir` and moved into place at the end, so an
    interrupted run leaves nothing half-written; an existing `out_dir` must be empty or absent.
    """
    classes = list(classes)
    if not classes:
        raise ValueError("classes: need at least one class")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:  # the ground truth is looked up by path: a repeated class would overwrite its own images
        raise ValueError(f"classes: {', '.join(map(repr, repeated))} listed more than once")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if sketches_per_photo < 1:
        raise ValueError(f"sketches_per_photo must be at least 1, got {sketches_per_photo}")
    if not 0 < test_photos_per_class < photos_per_class:
        raise ValueError(f"test_photos_per_class={test_photos_per_class} must be in [1, photos_per_class)")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"output folder {out_dir} exists and is not a folder")
    if os.path.exists(out_dir) and os.listdir(out_dir):
        raise FileExistsError(f"output folder {out_dir} exists and is not empty")
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # os.mkdir applies the umask (tempfile.mkdtemp's 0700 would stay on the benchmark folder)
    tmp = os.path.join(parent, f".synthetic-{os.getpid()}-{secrets.token_hex(8)}")
    os.mkdir(tmp)
    try:
        counts = _write(tmp, seed, classes, photos_per_class, sketches_per_photo, test_photos_per_class, masks)
        if os.path.exists(out_dir):
            os.rmdir(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return counts


def _write(out, seed, classes, n_photos, n_sketches, n_test, masks):
    train_rows, test_rows, fwds, bwds = [], [], [], []
    for ci, name in enumerate(classes, start=1):
        dirs = {kind: os.path.join(out, PREFIX, kind, TX, name) for kind in ("photo", "sketch", "mask", "sketch_mask")}
        for kind, d in dirs.items():
            if masks or "mask" not in kind:
                os.makedirs(d, exist_ok=True)
        for i in range(n_photos):
            rng = np.random.default_rng([seed, ci, i])
            pid = f"{name}_{i:04d}"
            parts = _place(shapes.instance(name, rng), rng)
            photo, mask = render.render_photo(parts, rng)
            kps = render.sample_keypoints(mask, rng)
            photo_rel = f"{PREFIX}/photo/{TX}/{name}/{pid}.jpg"
            Image.fromarray(photo).save(os.path.join(out, photo_rel), quality=92)
            if masks:
                Image.fromarray(mask.astype(np.uint8) * 255).save(os.path.join(dirs["mask"], pid + ".png"))
            is_test = i >= n_photos - n_test
            for k in range(1, n_sketches + 1):
                d = _deformation(parts, kps, rng)
                sketch_rel = f"{PREFIX}/sketch/{TX}/{name}/{pid}-{k}.png"
                Image.fromarray(render.render_sketch(parts, d, rng)).save(os.path.join(out, sketch_rel))
                if masks:
                    sm = _sketch_mask(mask, d).astype(np.uint8) * 255
                    Image.fromarray(sm).save(os.path.join(dirs["sketch_mask"], f"{pid}-{k}.png"))
                if is_test:
                    kq = d.apply(kps)
                    test_rows.append([photo_rel, sketch_rel, ci, _fmt(kps[:, 0]), _fmt(kps[:, 1]),
                                      _fmt(kq[:, 0]), _fmt(kq[:, 1])])
                    fwd, bwd = d.grids(16)
                    fwds.append(fwd)
                    bwds.append(bwd)
                else:
                    train_rows += [[photo_rel, sketch_rel, ci, flip] for flip in (0, 1)]
    _write_csv(os.path.join(out, "train_pairs_ps.csv"), ["photo", "sketch", "class", "flip"], train_rows)
    _write_csv(os.path.join(out, "test_pairs_ps.csv"), ["photo", "sketch", "class", "XA", "YA", "XB", "YB"],
               test_rows)
    np.savez(os.path.join(out, "test_pairs_gt.npz"), fwd=np.stack(fwds), bwd=np.stack(bwds),
             photo=np.array([r[0] for r in test_rows]), sketch=np.array([r[1] for r in test_rows]))
    return {"classes": len(classes), "photos": len(classes) * n_photos, "train_rows": len(train_rows),
            "test_pairs": len(test_rows)}


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pscfast.data.synthetic", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (absent or empty)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", default=",".join(shapes.DEFAULT_CLASSES),
                    help=f"comma-separated, from {','.join(shapes.CLASSES)}")
    ap.add_argument("--photos-per-class", type=int, default=12)
    ap.add_argument("--sketches-per-photo", type=int, default=2)
    ap.add_argument("--test-photos-per-class", type=int, default=4)
    ap.add_argument("--no-masks", action="store_true", help="skip the foreground masks")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        counts = generate(a.out, a.seed, [c.strip() for c in a.classes.split(",") if c.strip()],
                          a.photos_per_class, a.sketches_per_photo, a.test_photos_per_class, masks=not a.no_masks)
    except (ValueError, OSError) as exc:  # a bad argument, an unusable --out: one line
        ap.error(str(exc))
    print(f"wrote {a.out}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f" in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
