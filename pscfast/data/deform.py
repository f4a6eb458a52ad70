"""Smooth random deformations for the synthetic benchmark: photo pixel -> sketch pixel, its inverse, and the
16x16 absolute grids in the release's flow convention.

D(p) = A (p - c) + c + t + sum_k a_k sin(2 pi <f_k, p> / S + phi_k), p = (x, y) pixels, c = image centre.
The sine field's Lipschitz constant is kept below the smallest singular value of A, so D is a
diffeomorphism and D^-1(q) = A^-1 (q - c - t - s(p)) + c is a contraction solved by fixed-point iteration.

Grids (the release's convention): `fwd` lives on the sketch grid and points into the photo, `fwd[i, j] = D^-1(q_ij)`;
`bwd` lives on the photo grid and points into the sketch, `bwd[i, j] = D(p_ij)`; grid point (i, j) sits at
pixel (x, y) = (j, i) * (S - 1) / (n - 1) and values are normalised as grid_sample with align_corners=True:
g = 2 x / (S - 1) - 1, last dim (x, y).
"""
import numpy as np

SIZE = 256


class Deformation:
    """Affine + smooth sine field in pixel coordinates of a `size` x `size` image."""

    def __init__(self, A, t, amps, freqs, phases, size=SIZE):
        self.A = np.asarray(A, np.float64)
        self.t = np.asarray(t, np.float64)
        self.amps = np.asarray(amps, np.float64).reshape(-1, 2)
        self.freqs = np.asarray(freqs, np.float64).reshape(-1, 2)
        self.phases = np.asarray(phases, np.float64).reshape(-1)
        self.size = size
        self.c = (size - 1) / 2.0
        self.A_inv = np.linalg.inv(self.A)

    @classmethod
    def random(cls, rng, size=SIZE, strength=1.0):
        """Rotation +-20 deg, per-axis scale 0.75..1.15, shear +-0.15, shift +-28 px, three sine terms of
        3..7 px at 0.3..0.8 cycles per image (all scaled by `strength`). The sine field's Lipschitz constant
        (<= 3 * 7 * 2 pi * 0.8 / 256 = 0.41) stays below the smallest singular value of A (>= 0.65)."""
        ang = np.deg2rad(rng.uniform(-20, 20) * strength)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        scale = np.diag(1 + (rng.uniform(0.75, 1.15, 2) - 1) * strength)
        shear = np.array([[1, rng.uniform(-0.15, 0.15) * strength], [0, 1]])
        t = rng.uniform(-28, 28, 2) * strength * size / SIZE
        k = 3
        amps = rng.uniform(3, 7, (k, 2)) * rng.choice([-1, 1], (k, 2)) * strength * size / SIZE
        theta = rng.uniform(0, 2 * np.pi, k)
        freqs = rng.uniform(0.3, 0.8, k)[:, None] * np.stack([np.cos(theta), np.sin(theta)], 1)
        return cls(rot @ scale @ shear, t, amps, freqs, rng.uniform(0, 2 * np.pi, k), size)

    def _field(self, p):
        phase = 2 * np.pi * (p @ self.freqs.T) / self.size + self.phases  # (..., k)
        return np.sin(phase) @ self.amps

    def apply(self, p):
        """Photo pixel (x, y) -> sketch pixel, p of shape (..., 2)."""
        p = np.asarray(p, np.float64)
        return (p - self.c) @ self.A.T + self.c + self.t + self._field(p)

    def inverse(self, q, iters=40):
        """Sketch pixel (x, y) -> photo pixel (fixed-point iteration; converges geometrically)."""
        q = np.asarray(q, np.float64)
        p = (q - self.c - self.t) @ self.A_inv.T + self.c
        for _ in range(iters):
            p = (q - self.c - self.t - self._field(p)) @ self.A_inv.T + self.c
        return p

    def grids(self, n=16):
        """(fwd, bwd) float32 (n, n, 2) absolute normalised grids (module docstring)."""
        pix = pixel_grid(n, self.size)
        to_norm = 2.0 / (self.size - 1)
        fwd = self.inverse(pix) * to_norm - 1
        bwd = self.apply(pix) * to_norm - 1
        return fwd.astype(np.float32), bwd.astype(np.float32)


def pixel_grid(n, size=SIZE):
    """(n, n, 2) pixel (x, y) positions of an n x n align_corners=True grid over a size x size image."""
    v = np.arange(n) * (size - 1) / (n - 1)
    xs, ys = np.meshgrid(v, v)
    return np.stack([xs, ys], -1)
