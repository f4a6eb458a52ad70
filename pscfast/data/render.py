"""Rendering of the synthetic benchmark (numpy + PIL.ImageDraw): photos with colour, texture and background
clutter, foreground masks, and sketches drawn from the visible part outlines through a deformation, with
stroke jitter, breaks and omissions. All coordinates are (x, y) pixels of a 256 x 256 image.
"""
import numpy as np
from PIL import Image, ImageDraw

SIZE = 256


def _fill(pts, closed, width=3, size=SIZE):
    """Boolean (size, size) mask of a filled polygon (closed) or a polyline of `width` px."""
    im = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(im)
    xy = [tuple(p) for p in np.asarray(pts, np.float64)]
    if closed:
        draw.polygon(xy, fill=255)
    else:
        draw.line(xy, fill=255, width=width, joint="curve")
    return np.asarray(im) > 127


def _erode(m):
    """3x3 binary erosion (pixels outside the image count as background)."""
    p = np.pad(m, 1)
    out = m.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= p[dy:dy + m.shape[0], dx:dx + m.shape[1]]
    return out


def _texture(rng, size=SIZE):
    """Zero-mean brightness pattern in about [-1, 1]: flat, stripes, blotches or checker."""
    kind = rng.integers(4)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    if kind == 0:
        return np.zeros((size, size))
    if kind == 1:
        a = rng.uniform(0, np.pi)
        return np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / rng.uniform(6, 16) + rng.uniform(0, 6.3))
    if kind == 2:
        low = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
        return np.asarray(Image.fromarray(low, mode="F").resize((size, size), Image.BICUBIC), np.float64)
    period = rng.integers(8, 20)
    return ((xx // period + yy // period) % 2) * 2.0 - 1


def _background(rng, size=SIZE):
    c0, c1 = rng.uniform(40, 230, 3), rng.uniform(40, 230, 3)
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1.0)
    ramp = np.clip(0.5 + (xx - 0.5) * np.cos(a) + (yy - 0.5) * np.sin(a), 0, 1)[..., None]
    img = c0 * (1 - ramp) + c1 * ramp + 12 * _texture(rng, size)[..., None]
    for _ in range(rng.integers(8, 15)):  # clutter: random ellipses, boxes and lines
        x0, y0 = rng.uniform(-20, size, 2)
        w, h = rng.uniform(8, 60, 2)
        kind = rng.integers(3)
        if kind == 0:
            t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
            m = _fill(np.stack([x0 + w * np.cos(t), y0 + h * np.sin(t)], 1), True, size=size)
        elif kind == 1:
            m = _fill(np.array([[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]), True, size=size)
        else:
            m = _fill(np.array([[x0, y0], [x0 + rng.uniform(-80, 80), y0 + rng.uniform(-80, 80)]]), False,
                      width=int(rng.integers(1, 4)), size=size)
        alpha = rng.uniform(0.4, 0.9)
        img[m] = (1 - alpha) * img[m] + alpha * rng.uniform(0, 255, 3)
    return img


def render_photo(parts, rng, size=SIZE):
    """Photo (size, size, 3) uint8 and foreground mask (size, size) bool for parts in pixel coordinates."""
    img = _background(rng, size)
    palette = rng.uniform(20, 235, (4, 3))
    mask = np.zeros((size, size), bool)
    for part in parts:
        m = _fill(part["pts"], part["closed"], width=4, size=size)
        colour = np.clip(palette[part["colour"]] + rng.uniform(-20, 20, 3), 0, 255)
        layer = colour * (1 + rng.uniform(0.08, 0.25) * _texture(rng, size))[..., None]
        img[m] = layer[m]
        if part["closed"]:  # a thin darker rim, as object boundaries in photos have contrast
            rim = m & ~_erode(m)
            img[rim] *= 0.75
        if part["closed"] and not part["detail"]:
            mask |= m
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def densify(pts, closed, step=2.0):
    """Resample a polygon/polyline (K, 2) at about `step` px along its length."""
    pts = np.asarray(pts, np.float64)
    if closed:
        pts = np.concatenate([pts, pts[:1]], 0)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.concatenate([[0], np.cumsum(seg)])
    t = np.linspace(0, s[-1], max(int(s[-1] / step), 2) + 1)
    return np.stack([np.interp(t, s, pts[:, 0]), np.interp(t, s, pts[:, 1])], 1)


def visible_strokes(parts, size=SIZE):
    """Densified outlines with the pieces hidden behind later (front) closed parts removed.

    Returns a list of (points (K, 2) in photo pixels, part index) runs."""
    runs = []
    front = np.zeros((size, size), bool)
    for k in range(len(parts) - 1, -1, -1):
        part = parts[k]
        pts = densify(part["pts"], part["closed"])
        inner = _erode(front)
        ij = np.clip(np.round(pts).astype(int), 0, size - 1)
        keep = ~inner[ij[:, 1], ij[:, 0]]
        start = None
        for i, v in enumerate(np.append(keep, False)):
            if v and start is None:
                start = i
            elif not v and start is not None:
                if i - start >= 2:
                    runs.append((pts[start:i], k))
                start = None
        if part["closed"]:
            front |= _fill(part["pts"], True, size=size)
    return runs[::-1]


def render_sketch(parts, deformation, rng, size=SIZE):
    """Sketch (size, size) uint8, black strokes on white: visible outlines mapped through `deformation`
    (photo -> sketch pixels), each run cut into 1-3 strokes with small gaps, detail parts omitted with
    p = 0.3, other strokes with p = 0.07, and smooth jitter of up to ~2 px per stroke."""
    im = Image.new("L", (size, size), 255)
    draw = ImageDraw.Draw(im)
    width = int(rng.integers(2, 4))
    skip_detail = {k for k, p in enumerate(parts) if p["detail"] and rng.random() < 0.3}
    for pts, k in visible_strokes(parts, size):
        if k in skip_detail:
            continue
        cuts = np.sort(rng.integers(1, len(pts), rng.integers(0, 3))) if len(pts) > 8 else []
        for piece in np.split(pts, cuts):
            piece = piece[: max(len(piece) - int(rng.integers(0, 3)), 0)]  # a small gap before the next stroke
            if len(piece) < 2 or rng.random() < 0.07:
                continue
            q = deformation.apply(piece)
            s = np.linspace(0, 1, len(q))[:, None]
            q = q + rng.uniform(-1, 1, 2) + rng.uniform(-1.2, 1.2, 2) * np.sin(np.pi * s * rng.uniform(0.5, 2)
                                                                                 + rng.uniform(0, 6.3))
            draw.line([tuple(p) for p in q], fill=0, width=width, joint="curve")
    return np.asarray(im)


def sample_keypoints(mask, rng, k=8, iters=15):
    """k points spread over a foreground mask: k-means on (up to 3000) mask pixels, farthest-point start,
    each centroid snapped to the nearest mask pixel. Returns float (k, 2) (x, y) pixels."""
    ys, xs = np.nonzero(mask)
    pix = np.stack([xs, ys], 1).astype(np.float64)
    if len(pix) < k:
        raise ValueError(f"foreground mask has {len(pix)} pixels, fewer than {k} keypoints")
    sub = pix[rng.choice(len(pix), min(3000, len(pix)), replace=False)]
    centres = [sub[rng.integers(len(sub))]]
    for _ in range(k - 1):
        d = np.min(np.linalg.norm(sub[:, None] - np.array(centres)[None], axis=2), axis=1)
        centres.append(sub[np.argmax(d)])
    centres = np.array(centres)
    for _ in range(iters):
        label = np.argmin(np.linalg.norm(sub[:, None] - centres[None], axis=2), axis=1)
        centres = np.array([sub[label == j].mean(0) if np.any(label == j) else centres[j] for j in range(k)])
    nearest = np.argmin(np.linalg.norm(pix[:, None] - centres[None], axis=2), axis=0)
    return pix[nearest]
