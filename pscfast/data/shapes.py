"""Procedural object classes of the synthetic benchmark: each class is a list of parts in object units
(x right, y down, the object spans about [-1, 1]^2), drawn back to front.

A part is a dict: `pts` (K, 2) polygon or polyline, `closed` (filled region vs open line), `detail` (small
interior part that sketches often omit and masks ignore), `colour` index into the instance palette.
`instance(name, rng)` returns the parts of one random instance in object units.
"""
import numpy as np


def ellipse(cx, cy, rx, ry, n=48, a0=0.0, a1=2 * np.pi):
    a = np.linspace(a0, a1, n, endpoint=abs(a1 - a0) < 2 * np.pi - 1e-9)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], 1)


def rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def poly(*xy):
    return np.asarray(xy, np.float64).reshape(-1, 2)


def _p(pts, colour=0, closed=True, detail=False):
    return {"pts": np.asarray(pts, np.float64), "closed": closed, "detail": detail, "colour": colour}


def _snowman(r):
    return [_p(ellipse(0, 0.55, 0.42 * r(), 0.4 * r()), 0), _p(ellipse(0, -0.05, 0.3 * r(), 0.28 * r()), 0),
            _p(ellipse(0, -0.5, 0.21 * r(), 0.2 * r()), 0), _p(rect(-0.17, -0.95, 0.17 * r(), -0.66), 1),
            _p(ellipse(-0.07, -0.53, 0.035, 0.035), 2, detail=True),
            _p(ellipse(0.07, -0.53, 0.035, 0.035), 2, detail=True),
            _p(poly(-0.08, -0.42, 0, -0.38, 0.08, -0.42), 2, closed=False, detail=True)]


def _mushroom(r):
    return [_p(rect(-0.2 * r(), -0.1, 0.2 * r(), 0.9), 1),
            _p(ellipse(0, 0.0, 0.85 * r(), 0.8 * r(), n=40, a0=np.pi, a1=2 * np.pi), 0),
            _p(ellipse(-0.35, -0.35, 0.12, 0.09), 2, detail=True), _p(ellipse(0.3, -0.5, 0.1, 0.08), 2, detail=True)]


def _fish(r):
    return [_p(poly(0.45, 0, 0.95, -0.45 * r(), 0.9, 0.45 * r()), 1),
            _p(poly(-0.25, -0.3, 0.1, -0.7 * r(), 0.25, -0.28), 1),
            _p(ellipse(-0.1, 0, 0.62 * r(), 0.36 * r()), 0),
            _p(ellipse(-0.45, -0.08, 0.06, 0.06), 2, detail=True),
            _p(poly(-0.25, -0.25, -0.15, 0, -0.25, 0.25), 2, closed=False, detail=True)]


def _house(r):
    h = 0.15 * r()
    return [_p(rect(0.3, -0.75, 0.48, -0.3), 2), _p(rect(-0.7, -0.1 + h, 0.7, 0.9), 0),
            _p(poly(-0.85, -0.1 + h, 0, -0.8 * r(), 0.85, -0.1 + h), 1),
            _p(rect(-0.15, 0.45, 0.15, 0.9), 2, detail=True), _p(rect(-0.55, 0.2 + h, -0.3, 0.45 + h), 2, detail=True)]


def _car(r):
    return [_p(poly(-0.45, -0.05, -0.3, -0.5 * r(), 0.35, -0.5 * r(), 0.5, -0.05), 1),
            _p(rect(-0.95, -0.05, 0.95, 0.45 * r()), 0),
            _p(ellipse(-0.55, 0.45, 0.22 * r(), 0.22 * r()), 2), _p(ellipse(0.55, 0.45, 0.22 * r(), 0.22 * r()), 2),
            _p(rect(-0.22, -0.4, 0.22, -0.12), 3, detail=True)]


def _tree(r):
    return [_p(rect(-0.14 * r(), 0.2, 0.14 * r(), 0.95), 1), _p(ellipse(-0.38, -0.05, 0.4 * r(), 0.35 * r()), 0),
            _p(ellipse(0.38, -0.05, 0.4 * r(), 0.35 * r()), 0), _p(ellipse(0, -0.45, 0.5 * r(), 0.45 * r()), 0)]


def _lamp(r):
    return [_p(ellipse(0, 0.85, 0.5 * r(), 0.12), 1), _p(rect(-0.06, -0.3, 0.06, 0.82), 1),
            _p(poly(-0.3 * r(), -0.9, 0.3 * r(), -0.9, 0.6 * r(), -0.25, -0.6 * r(), -0.25), 0),
            _p(poly(0.3, 0.1, 0.45, 0.1), 2, closed=False, detail=True)]


def _bird(r):
    return [_p(poly(0.5, 0.05, 0.95, -0.1 * r(), 0.95, 0.25 * r()), 1),
            _p(ellipse(0.05, 0.1, 0.55 * r(), 0.35 * r()), 0), _p(ellipse(-0.5, -0.35, 0.25 * r(), 0.24 * r()), 0),
            _p(poly(-0.73, -0.42, -0.95, -0.33, -0.73, -0.28), 2),
            _p(ellipse(0.1, 0.05, 0.3, 0.14, a0=0, a1=np.pi, n=20), 1, closed=False, detail=True),
            _p(ellipse(-0.55, -0.4, 0.04, 0.04), 2, detail=True),
            _p(poly(-0.05, 0.42, -0.1, 0.85), 2, closed=False), _p(poly(0.2, 0.42, 0.25, 0.85), 2, closed=False)]


CLASSES = {"snowman": _snowman, "mushroom": _mushroom, "fish": _fish, "house": _house,
           "car": _car, "tree": _tree, "lamp": _lamp, "bird": _bird}
DEFAULT_CLASSES = ("snowman", "mushroom", "fish", "house", "car", "tree")


def instance(name, rng):
    """Parts of one random instance of class `name` in object units: part sizes vary by +-12%, each part
    moves by up to 0.04 units, and the object may be mirrored."""
    if name not in CLASSES:
        raise ValueError(f"unknown synthetic class {name!r}; known: {sorted(CLASSES)}")
    parts = CLASSES[name](lambda: rng.uniform(0.88, 1.12))
    mirror = rng.random() < 0.5
    for part in parts:
        part["pts"] = part["pts"] + rng.uniform(-0.04, 0.04, 2)
        if mirror:
            part["pts"] = part["pts"] * np.array([-1.0, 1.0])
    return parts
