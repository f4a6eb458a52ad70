"""Predict and draw photo-sketch correspondences for one pair of images of any size.

    python -m pscfast.predict PHOTO SKETCH --checkpoint X --out fig.png [--keypoints "x,y;x,y;..."]

Both images are resized to 256x256 (bilinear) for the model and results are mapped back to each image's own
pixels. `--keypoints` are photo points (x, y) in the photo's pixels, carried into the sketch by the
backward flow; without them, 8 keypoints are sampled on the sketch as PSC6k does (pscfast.data.keypoints)
and carried into the photo by the forward flow. Writes the picture (photo and sketch with numbered coloured
points, and the photo warped onto the sketch) and, beside it, `<out>.flow.pt` with the 16x16 `fwd`, `bwd`
grids (release convention), `kp_photo`, `kp_sketch` (K, 2) (x, y) in original pixels and the image sizes.
`--checkpoint identity` uses the identity flow (no model; for trying the tool out).
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

from pscfast.data.images import normalize
from pscfast.evaluation.pck import transfer_keypoints
from pscfast.models import ARCHS
from pscfast.ops._reference import identity_grid
from pscfast import viz

SIZE = 256


def load_any(path):
    """(original (H, W, 3) uint8, (3, 256, 256) float in [0, 1])."""
    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise SystemExit(f"pscfast.predict: cannot read image {path}: {e}") from None
    small = np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
    return np.asarray(rgb), torch.from_numpy(small.transpose(2, 0, 1).copy())


def to_frame(kp, wh):
    """(x, y) pixels of a W x H image -> pixels of the 256 x 256 resize (pixel centres align)."""
    return (kp + 0.5) * (SIZE / np.asarray(wh, np.float64)) - 0.5


def from_frame(kp, wh):
    return (kp + 0.5) * (np.asarray(wh, np.float64) / SIZE) - 0.5


def parse_keypoints(text):
    try:
        pts = [[float(v) for v in p.split(",")] for p in text.split(";") if p.strip()]
    except ValueError:
        raise SystemExit(f"pscfast.predict: --keypoints {text!r}: expected 'x,y;x,y;...' numbers") from None
    if not pts or any(len(p) != 2 for p in pts):
        raise SystemExit(f"pscfast.predict: --keypoints {text!r}: expected 'x,y;x,y;...' pairs")
    return np.array(pts)


def build_predictor(checkpoint, arch=None, device="cpu"):
    """(photo, sketch) in [0, 1] (N, 3, 256, 256) -> (fwd, bwd) grids; 'identity' needs no model."""
    if checkpoint == "identity":
        return lambda p, s: (identity_grid(p.shape[0], 16, 16, device=p.device),) * 2
    from pscfast.models import load_checkpoint
    model = load_checkpoint(checkpoint, arch=arch).to(device).eval()
    return lambda p, s: model.predict_flow(normalize(p), normalize(s))


def predict_pair(photo_path, sketch_path, predict, keypoints=None, device="cpu"):
    """Returns a dict: figure (H, W, 3) uint8, fwd, bwd (16, 16, 2), kp_photo, kp_sketch (K, 2) original px."""
    photo_full, photo = load_any(photo_path)
    sketch_full, sketch = load_any(sketch_path)
    pwh, swh = photo_full.shape[1::-1], sketch_full.shape[1::-1]
    with torch.no_grad():
        fwd, bwd = predict(photo[None].to(device), sketch[None].to(device))
    fwd, bwd = fwd[0].float().cpu(), bwd[0].float().cpu()
    if keypoints is not None:
        w, h = pwh
        outside = [i for i, (x, y) in enumerate(keypoints, 1) if not (0 <= x <= w - 1 and 0 <= y <= h - 1)]
        if outside:
            i = outside[0]
            raise ValueError(f"keypoint {i} ({keypoints[i - 1][0]:g}, {keypoints[i - 1][1]:g}) lies outside the "
                             f"{w}x{h} photo (x in [0, {w - 1}], y in [0, {h - 1}])")
        kp_src, flow, src_wh, dst_wh = keypoints, bwd, pwh, swh
    else:
        from pscfast.data.keypoints import sample_sketch_keypoints
        kp_src = from_frame(sample_sketch_keypoints(viz.to_uint8(sketch)), swh)
        flow, src_wh, dst_wh = fwd, swh, pwh
    src = torch.as_tensor(to_frame(kp_src, src_wh), dtype=torch.float32)
    dst = transfer_keypoints(flow[None], src.flip(-1)[None], SIZE)[0].flip(-1).numpy()
    kp_dst = from_frame(dst, dst_wh)
    kp_photo, kp_sketch = (kp_src, kp_dst) if keypoints is not None else (kp_dst, kp_src)
    warped = viz.warp_image(photo, fwd, size=tuple(sketch_full.shape[:2]))
    figure = viz.correspondence_figure(photo_full, sketch_full, kp_photo, kp_sketch, warped, height=320)
    return {"figure": figure, "fwd": fwd, "bwd": bwd, "kp_photo": kp_photo, "kp_sketch": kp_sketch,
            "photo_size": pwh, "sketch_size": swh}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pscfast.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("photo")
    ap.add_argument("sketch")
    ap.add_argument("--checkpoint", required=True, help="pscfast or release checkpoint, or 'identity'")
    ap.add_argument("--arch", default=None, choices=ARCHS, help="the encoder (default: from the checkpoint)")
    ap.add_argument("--out", required=True, help="picture to write (.png)")
    ap.add_argument("--keypoints", default=None, help="photo points 'x,y;x,y;...' in the photo's pixels")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    kps = parse_keypoints(a.keypoints) if a.keypoints else None
    try:
        r = predict_pair(a.photo, a.sketch, build_predictor(a.checkpoint, a.arch, a.device), kps, a.device)
    except ValueError as exc:
        raise SystemExit(f"pscfast.predict: {exc}") from None
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    Image.fromarray(r.pop("figure")).save(a.out)
    flow_path = os.path.splitext(a.out)[0] + ".flow.pt"
    torch.save({k: torch.as_tensor(np.asarray(v)) for k, v in r.items()}, flow_path)
    for i, (p, s) in enumerate(zip(r["kp_photo"], r["kp_sketch"]), 1):
        print(f"{i}: photo ({p[0]:.1f}, {p[1]:.1f}) <-> sketch ({s[0]:.1f}, {s[1]:.1f})")
    print(f"wrote {a.out} and {flow_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
