"""PSC6k keypoint sampling (appendix A.1) on drawn sketches with known object masks."""
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from pscfast.data.keypoints import sample_sketch_keypoints, sketch_mask, spectral_parts

# a horseshoe (U) outline: two arms joined at the bottom, 3 px strokes
U = [(40, 30), (100, 30), (100, 170), (156, 170), (156, 30), (216, 30), (216, 226), (40, 226)]


def _u_sketch(gap=False):
    im = Image.new("L", (256, 256), 255)
    d = ImageDraw.Draw(im)
    pts = U + [U[0]]
    for a, b in zip(pts[:-1], pts[1:]):
        d.line([a, b], fill=0, width=3)
    if gap:  # break the outline twice, and add a speck of dust
        d.rectangle([60, 222, 66, 230], fill=255)
        d.rectangle([180, 26, 185, 34], fill=255)
        d.point((5, 5), fill=0)
    truth = Image.new("L", (256, 256), 0)
    ImageDraw.Draw(truth).polygon(U, fill=255)
    return np.asarray(im), np.asarray(truth) > 0


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_mask_of_closed_and_broken_outline():
    for gap in (False, True):
        sketch, truth = _u_sketch(gap)
        assert _iou(sketch_mask(sketch), truth) > 0.95, gap


def test_parts_are_connected_and_keypoints_on_the_object():
    sketch, truth = _u_sketch(gap=True)
    mask = sketch_mask(sketch)
    pts, labels = spectral_parts(mask, k=8, stride=4)
    lattice = np.zeros((64, 64), int) - 1
    lattice[(pts[:, 1] // 4).astype(int), (pts[:, 0] // 4).astype(int)] = labels
    sizes = np.bincount(labels, minlength=8)
    assert (sizes > 0.04 * len(pts)).all(), sizes
    for j in range(8):  # spectral parts on the kNN graph do not jump across the U's gap
        assert ndimage.label(lattice == j, structure=np.ones((3, 3)))[1] == 1, j
    kp = sample_sketch_keypoints(sketch)
    assert kp.shape == (8, 2)
    ij = np.round(kp).astype(int)
    assert truth[ij[:, 1], ij[:, 0]].mean() >= 7 / 8
    d = np.linalg.norm(kp[:, None] - kp[None], axis=2) + np.eye(8) * 1e9
    assert d.min() > 15
    # both arms and the base get keypoints
    assert (kp[:, 0] < 100).sum() >= 2 and (kp[:, 0] > 156).sum() >= 2
    assert np.array_equal(kp, sample_sketch_keypoints(sketch)), "deterministic"


def test_synthetic_sketch(tiny_root):
    import glob
    import os
    for path in sorted(glob.glob(os.path.join(tiny_root, "rendered_256x256/256x256/sketch/*/fish/*.png")))[:2]:
        sketch = np.asarray(Image.open(path))
        truth = np.asarray(Image.open(path.replace("/sketch/", "/sketch_mask/"))) > 127
        kp = sample_sketch_keypoints(sketch)
        ij = np.round(kp).astype(int)
        grown = ndimage.binary_dilation(truth, iterations=4)
        assert grown[ij[:, 1], ij[:, 0]].all()
