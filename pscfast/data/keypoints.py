"""PSC6k's keypoint sampling for sketches (paper, appendix A.1).

1. Object mask: strokes = dark pixels; dilate them step by step until they form one connected piece, then
   fill the outer contour (every pixel not reachable from the image border without crossing a stroke) and
   erode by as many steps as were dilated.
2. Spectral clustering of the mask pixels (on a `stride` lattice) into `k` pseudo-parts: a symmetric
   k-nearest-neighbour graph, so affinity follows paths inside the mask (parts stay connected), the
   `k` leading eigenvectors of the normalised adjacency D^-1/2 W D^-1/2, rows normalised, k-means.
3. One keypoint per pseudo-part: its centroid.
"""
import numpy as np
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from scipy.sparse import coo_matrix, diags
from scipy.sparse.linalg import eigsh
from scipy.spatial import cKDTree


def sketch_mask(sketch, threshold=128, max_dilation=32, min_piece=4):
    """Filled object mask (H, W) bool of a sketch (H, W) or (H, W, 3) uint8, dark strokes on light paper.

    Stroke pieces smaller than `min_piece` pixels (specks) are ignored when counting pieces."""
    gray = np.asarray(sketch)
    if gray.ndim == 3:
        gray = gray.mean(2)
    strokes = gray < threshold
    if not strokes.any():
        raise ValueError("sketch has no strokes (no pixel darker than the threshold)")
    grown, steps = strokes, 0
    for steps in range(max_dilation + 1):
        labels, n = ndimage.label(grown, structure=np.ones((3, 3)))
        if n <= 1 or np.sum(np.bincount(labels.ravel())[1:] >= min_piece) <= 1:
            break
        grown = ndimage.binary_dilation(grown, structure=np.ones((3, 3)))
    filled = ndimage.binary_fill_holes(grown)
    if steps:  # undo the growth outside (a closing), so the mask hugs the drawn outline
        filled = ndimage.binary_erosion(filled, structure=np.ones((3, 3)), iterations=steps) | strokes
    return filled


def spectral_parts(mask, k=8, stride=4, neighbours=8, seed=0):
    """Cluster the mask's pixels into k pseudo-parts. Returns (points (P, 2) (x, y), labels (P,))."""
    ys, xs = np.nonzero(mask[::stride, ::stride])
    pts = np.stack([xs, ys], 1).astype(np.float64) * stride
    if len(pts) < 4 * k:
        ys, xs = np.nonzero(mask)
        pts = np.stack([xs, ys], 1).astype(np.float64)
    if len(pts) < k:
        raise ValueError(f"mask has {len(pts)} pixels, fewer than k={k}")
    nn = min(neighbours, len(pts) - 1)
    _, idx = cKDTree(pts).query(pts, nn + 1)
    rows = np.repeat(np.arange(len(pts)), nn)
    w = coo_matrix((np.ones(rows.size), (rows, idx[:, 1:].ravel())), shape=(len(pts),) * 2).tocsr()
    w = ((w + w.T) > 0).astype(np.float64)
    d = np.asarray(w.sum(1)).ravel()
    norm = diags(1 / np.sqrt(d)) @ w @ diags(1 / np.sqrt(d))
    rng = np.random.default_rng(seed)
    _, vecs = eigsh(norm, k=k, which="LA", v0=rng.uniform(0.5, 1.5, len(pts)))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True) + 1e-12
    _, labels = kmeans2(vecs, k, minit="++", seed=seed)
    return pts, labels


def sample_sketch_keypoints(sketch, k=8, seed=0, **kw):
    """k keypoints (k, 2) (x, y) pixels spanning the sketched object: centroids of spectral pseudo-parts of
    its filled mask. An empty cluster (rare) is replaced by the farthest mask point from the others."""
    mask = sketch_mask(sketch)
    pts, labels = spectral_parts(mask, k, seed=seed, **kw)
    cents = [pts[labels == j].mean(0) for j in range(k) if np.any(labels == j)]
    while len(cents) < k:
        dist = np.min(np.linalg.norm(pts[:, None] - np.array(cents)[None], axis=2), axis=1)
        cents.append(pts[np.argmax(dist)])
    return np.array(cents)
