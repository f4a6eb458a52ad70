"""Pictures of photo-sketch correspondences (PIL only), for `python -m pscfast.predict` and TensorBoard.

Every function returns an (H, W, 3) uint8 array (TensorBoard: `writer.add_image(tag, arr, step,
dataformats="HWC")`). Images are (3, H, W) tensors in [0, 1] or (H, W, 3) uint8 arrays; keypoints are
(K, 2) (x, y) pixels of the image they are drawn on.
"""
import colorsys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from pscfast.evaluation.pck import transfer_keypoints


def to_uint8(image):
    """(3, H, W) float tensor in [0, 1] or (H, W, 3) uint8 array -> (H, W, 3) uint8 array."""
    if torch.is_tensor(image):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected (3, H, W), got {tuple(image.shape)}")
        return (image.detach().float().clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return image


def colours(k):
    """k distinct saturated RGB colours."""
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(k, 1), 0.9, 1.0)) for i in range(k)]


def draw_points(image, points, radius=5, labels=True):
    """Numbered coloured points on a copy of `image`; points outside the image are drawn clipped to it."""
    im = Image.fromarray(to_uint8(image).copy())
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default()
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    w, h = im.size
    for i, ((x, y), c) in enumerate(zip(pts, colours(len(pts)))):
        x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=c, outline=(0, 0, 0), width=1)
        if labels:
            draw.text((x + radius + 1, y - radius - 2), str(i + 1), fill=c, font=font, stroke_width=2,
                      stroke_fill=(0, 0, 0))
    return np.asarray(im)


def draw_truth(image, points, truth, radius=5):
    """Ground truth of numbered `points`: a ring at each `truth` position in the point's colour, joined to
    the point by a line (the error)."""
    im = Image.fromarray(to_uint8(image).copy())
    draw = ImageDraw.Draw(im)
    pts, tru = (np.asarray(p, np.float64).reshape(-1, 2) for p in (points, truth))
    w, h = im.size
    r = radius + 2
    for (x, y), (u, v), c in zip(pts, tru, colours(len(pts))):
        x, y = min(max(x, 0), w - 1), min(max(y, 0), h - 1)
        draw.line([x, y, u, v], fill=c, width=2)
        draw.ellipse([u - r, v - r, u + r, v + r], outline=(0, 0, 0), width=4)
        draw.ellipse([u - r, v - r, u + r, v + r], outline=c, width=2)
    return np.asarray(im)


def warp_image(image, flow, size=None):
    """Sample `image` (3, H, W) at the absolute grid `flow` (h, w, 2) upsampled to `size` = (H', W')
    (default: the image size): bilinear, border padding, align_corners=True, as PSC warps images."""
    size = size or tuple(image.shape[-2:])
    grid = F.interpolate(flow.permute(2, 0, 1)[None].float(), size, mode="bilinear", align_corners=True)
    return F.grid_sample(image[None].float(), grid.permute(0, 2, 3, 1), mode="bilinear", padding_mode="border",
                         align_corners=True)[0]


def overlay_strokes(image, sketch, strength=0.8):
    """Darken `image` where `sketch` (same size) has dark strokes, to judge an alignment by eye."""
    img, sk = to_uint8(image).astype(np.float32), to_uint8(sketch).astype(np.float32)
    ink = 1 - sk.mean(2, keepdims=True) / 255
    return (img * (1 - strength * ink)).clip(0, 255).astype(np.uint8)


def hstack(panels, gap=6, height=None):
    """Panels side by side on white, each resized to `height` (default: the tallest) keeping aspect."""
    arrs = [to_uint8(p) for p in panels]
    height = height or max(a.shape[0] for a in arrs)
    ims = [Image.fromarray(a).resize((max(1, round(a.shape[1] * height / a.shape[0])), height), Image.BILINEAR)
           for a in arrs]
    out = Image.new("RGB", (sum(i.width for i in ims) + gap * (len(ims) - 1), height), (255, 255, 255))
    x = 0
    for im in ims:
        out.paste(im, (x, 0))
        x += im.width + gap
    return np.asarray(out)


def _fit(image, points, height):
    """Resize to `height` (keeping aspect) and scale (x, y) points along (pixel centres stay aligned)."""
    a = to_uint8(image)
    if height is None or a.shape[0] == height:
        return a, np.asarray(points, np.float64)
    w = max(1, round(a.shape[1] * height / a.shape[0]))
    scale = np.array([w / a.shape[1], height / a.shape[0]])
    resized = np.asarray(Image.fromarray(a).resize((w, height), Image.BILINEAR))
    return resized, (np.asarray(points, np.float64) + 0.5) * scale - 0.5


def correspondence_figure(photo, sketch, kp_photo, kp_sketch, warped=None, height=None, radius=5, kp_truth=None):
    """[photo with numbered points | sketch with the same numbers | optional warped photo with the sketch's
    strokes on top]. kp_photo / kp_sketch: (K, 2) (x, y) in each image's own pixels, point i <-> point i.
    kp_truth: optional (K, 2) true positions in the sketch, drawn as rings joined to kp_sketch.
    `height`: panel height in the picture (default: the photo's); points keep `radius` px there."""
    height = height or to_uint8(photo).shape[0]
    photo, kp_photo = _fit(photo, kp_photo, height)
    sketch_small, kp_small = _fit(sketch, kp_sketch, height)
    marked = sketch_small if kp_truth is None else draw_truth(sketch_small, kp_small, _fit(sketch, kp_truth, height)[1],
                                                              radius)
    panels = [draw_points(photo, kp_photo, radius), draw_points(marked, kp_small, radius)]
    if warped is not None:
        warped_small, _ = _fit(warped, kp_sketch, height)
        panels.append(draw_points(overlay_strokes(warped_small, sketch_small), kp_small, radius, labels=False))
    return hstack(panels)


def grid_keypoints(n=4, size=256, margin=0.2):
    """n x n (x, y) points over the central part of a size x size image."""
    v = np.linspace(margin, 1 - margin, n) * (size - 1)
    xs, ys = np.meshgrid(v, v)
    return np.stack([xs.ravel(), ys.ravel()], 1)


def flow_figure(photo, sketch, fwd, bwd, kp_photo=None, kp_sketch=None):
    """Training picture of one pair: photo points (default a 4x4 grid) carried into the sketch by `bwd`
    (with rings at their true positions `kp_sketch` when given), and the photo warped into the sketch frame
    by `fwd`. photo, sketch (3, S, S) in [0, 1]; fwd, bwd (h, w, 2) absolute grids (release convention);
    keypoints (K, 2) (x, y) pixels. Returns (H, W, 3) uint8."""
    size = photo.shape[-1]
    kp = torch.as_tensor(grid_keypoints(4, size) if kp_photo is None else kp_photo, dtype=torch.float32)
    pred = transfer_keypoints(bwd[None].float().cpu(), kp.flip(-1)[None], size)[0].flip(-1)
    warped = warp_image(photo.float().cpu(), fwd.float().cpu())
    return correspondence_figure(photo, sketch, kp.numpy(), pred.numpy(), warped,
                                 kp_truth=None if kp_sketch is None else np.asarray(kp_sketch))


def batch_figure(photos, sketches, fwd, bwd, n=4, kp_photo=None, kp_sketch=None):
    """`flow_figure` of the first n pairs of a batch stacked vertically: (n*S, W, 3) uint8 (for TensorBoard).
    kp_photo, kp_sketch: optional per-pair keypoints (sequences of (K, 2)), e.g. a test set's."""
    pick = lambda kps, i: None if kps is None else kps[i]  # noqa: E731
    rows = [flow_figure(photos[i], sketches[i], fwd[i], bwd[i], pick(kp_photo, i), pick(kp_sketch, i))
            for i in range(min(n, photos.shape[0]))]
    return np.concatenate(rows, 0)
