"""Predict and draw photo-sketch correspondences for one pair of images of any size.

    python -m pscfast.predict PHOTO SKETCH --checkpoint X --out fig.png [--keypoints "x,y;x,y;..."]

Both images are resized to 256x256 (bilinear) for the model and results are mapped back to each image's own
pixels. `--keypoints` are photo points (x, y) in the photo's pixels, carried into the sketch by the
backward flow; without them, 8 keypoints are sampled on the sketch as PSC6k does (pscfast.data.keypoints)
and carried into the photo by the forward flow. Writes the picture (photo and sketch with numbered coloured
points, and the photo warped onto the sketch) and, beside it, `<out>.flow.pt` with the 16x16 `fwd`, `bwd`
grids (release convention), `kp_photo`, `kp_sketch` (K, 2) (x, y) in original pixels and the image sizes.
`--checkpoint identity` uses the identity flow (no model; for trying the tool out). The picture's format
follows `--out`'s extension (.png, .jpg, ... : any format PIL writes), checked, with the device, before the
model runs; errors are one line.
"""
import argparse
import os
import sys

import numpy as np
import torch
from PIL import Image

from pscfast import viz
from pscfast._cli import one_line_errors
from pscfast._device import choose_device
from pscfast.data.images import open_rgb
from pscfast.evaluation import identity_predictor, model_predictor
from pscfast.evaluation.pck import transfer_keypoints
from pscfast.models import ARCHS, load_checkpoint
from pscfast.models._load import atomic_write, check_writable

SIZE = 256


def load_any(path):
    """(original (H, W, 3) uint8, (3, 256, 256) float in [0, 1]); decoded as the benchmark loaders do
    (pscfast.data.images.open_rgb: transparency onto white, 16-bit and float images scaled)."""
    rgb = open_rgb(path)
    small = np.asarray(rgb.resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
    return np.asarray(rgb), torch.from_numpy(small.transpose(2, 0, 1).copy())


def to_frame(kp, wh):
    """(x, y) pixels of a W x H image -> pixels of the 256 x 256 resize (pixel centres align)."""
    return (kp + 0.5) * (SIZE / np.asarray(wh, np.float64)) - 0.5


def from_frame(kp, wh):
    return (kp + 0.5) * (np.asarray(wh, np.float64) / SIZE) - 0.5


def parse_keypoints(text):
    """'x,y;x,y;...' -> (K, 2) array; ValueError naming --keypoints otherwise."""
    try:
        pts = [[float(v) for v in p.split(",")] for p in text.split(";") if p.strip()]
    except ValueError:
        raise ValueError(f"--keypoints {text!r}: expected 'x,y;x,y;...' numbers") from None
    if not pts or any(len(p) != 2 for p in pts):
        raise ValueError(f"--keypoints {text!r}: expected 'x,y;x,y;...' pairs")
    return np.array(pts)


def picture_format(path):
    """PIL's format name for writing `path`, from its extension; ValueError when PIL cannot write it."""
    Image.init()
    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        what = f"the extension {ext!r} names no picture format that PIL writes" if ext else "no file extension"
        raise ValueError(f"--out: {path}: {what}; use .png or .jpg")
    return fmt


def build_predictor(checkpoint, arch=None, device="cpu"):
    """(photo, sketch) in [0, 1] (N, 3, 256, 256) -> (fwd, bwd) grids; 'identity' needs no model."""
    if checkpoint == "identity":
        return identity_predictor
    return model_predictor(load_checkpoint(checkpoint, arch=arch).to(device), SIZE)


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
        from pscfast.data.keypoints import sample_sketch_keypoints  # scipy: an optional dependency
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pscfast.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("photo")
    ap.add_argument("sketch")
    ap.add_argument("--checkpoint", required=True, help="pscfast or release checkpoint, or 'identity'")
    ap.add_argument("--arch", default=None, choices=ARCHS, help="the encoder (default: from the checkpoint)")
    ap.add_argument("--out", required=True, help="picture to write (.png)")
    ap.add_argument("--keypoints", default=None, help="photo points 'x,y;x,y;...' in the photo's pixels")
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:N")
    a = ap.parse_args(argv)
    flow_path = os.path.splitext(a.out)[0] + ".flow.pt"
    with one_line_errors("pscfast.predict"):
        kps = parse_keypoints(a.keypoints) if a.keypoints else None
        fmt = picture_format(a.out)
        check_writable(a.out, "--out")
        device = choose_device(a.device, "--device")
        r = predict_pair(a.photo, a.sketch, build_predictor(a.checkpoint, a.arch, device), kps, device)
        figure = Image.fromarray(r.pop("figure"))
        atomic_write(a.out, lambda f: figure.save(f, format=fmt), "--out")
        flow = {k: torch.as_tensor(np.asarray(v)) for k, v in r.items()}
        atomic_write(flow_path, lambda f: torch.save(flow, f), "--out")
    for i, (p, s) in enumerate(zip(r["kp_photo"], r["kp_sketch"]), 1):
        print(f"{i}: photo ({p[0]:.1f}, {p[1]:.1f}) <-> sketch ({s[0]:.1f}, {s[1]:.1f})")
    print(f"wrote {a.out} and {flow_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
