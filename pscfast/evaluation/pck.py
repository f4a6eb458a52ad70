"""PCK on PSC6k as the authors' release evaluates it (Lu, Wang, Fan, ICML 2023), and the consistency measure.

Keypoint transfer: the flow (N, h, w, 2) (absolute grid, (x, y), align_corners=True) is upsampled to
size x size (bilinear, align_corners=True), converted to pixels as (g + 1) (size - 1) / 2, and read at the
source keypoint rounded to the nearest pixel (row, col); the result is returned as (row, col).
A keypoint is correct when its Euclidean distance to the annotation is <= alpha * size pixels
(12.8 px at alpha = 0.05, 25.6 px at 0.10 for size 256). Directions: photo -> sketch reads `bwd` (it lives
on the photo grid and points into the sketch) at photo keypoints; sketch -> photo reads `fwd` at sketch
keypoints. PCK = mean over all keypoints of both directions.
"""
import torch
import torch.nn.functional as F

ALPHAS = (0.05, 0.10)


def upsample_flow(flow, size=256):
    """(N, h, w, 2) grid -> (N, size, size, 2), bilinear, align_corners=True (unchanged when already size)."""
    if flow.dim() != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow: expected (N, h, w, 2), got {tuple(flow.shape)}")
    if flow.shape[1] == size and flow.shape[2] == size:
        return flow
    return F.interpolate(flow.permute(0, 3, 1, 2), (size, size), mode="bilinear",
                         align_corners=True).permute(0, 2, 3, 1)


def transfer_keypoints(flow, kp_rowcol, size=256):
    """Move keypoints through a flow, exactly as the release.

    flow: (N, h, w, 2) absolute grid living on the source image; kp_rowcol: (N, K, 2) source keypoints as
    (row, col) pixels. Returns float (N, K, 2) (row, col) pixels in the target image. Rounded keypoints
    outside the image are clamped to its border pixels (the release would index out of range).
    """
    if kp_rowcol.dim() != 3 or kp_rowcol.shape[-1] != 2 or kp_rowcol.shape[0] != flow.shape[0]:
        raise ValueError(f"kp_rowcol: expected (N, K, 2) with N = {flow.shape[0]}, got {tuple(kp_rowcol.shape)}")
    n, k = kp_rowcol.shape[:2]
    px = (upsample_flow(flow, size) + 1) * (size - 1) / 2
    idx = torch.round(kp_rowcol).long().clamp(0, size - 1)
    flat = (idx[..., 0] * size + idx[..., 1]).unsqueeze(-1).expand(-1, -1, 2)
    return torch.gather(px.reshape(n, size * size, 2), 1, flat).flip(-1)


def correct(pred_rowcol, gt_rowcol, alpha, size=256):
    """Bool (N, K): keypoints within alpha * size pixels of the annotation."""
    dist = torch.sqrt(((pred_rowcol - gt_rowcol) ** 2).sum(-1))
    return dist <= alpha * size


def pck(pred_rowcol, gt_rowcol, alpha, size=256):
    """Per-pair PCK (N,) float64: fraction of correct keypoints."""
    return correct(pred_rowcol, gt_rowcol, alpha, size).double().mean(-1)


def xy_to_rowcol(kp):
    """(…, 2) (x, y) <-> (row, col): the same swap both ways."""
    return kp.flip(-1)


def pair_scores(fwd, bwd, kp_photo, kp_sketch, size=256, alphas=ALPHAS):
    """Both directions for a batch. kp_* (N, K, 2) (x, y) pixels; flows as in the module docstring.

    Returns {"pred_sketch", "pred_photo": (N, K, 2) (x, y) predictions,
             f"pck{a}" for a in alphas: (N, 2) per-pair scores, column 0 photo->sketch, 1 sketch->photo}
    with keys pck05 / pck10 for alpha 0.05 / 0.10."""
    pred_sketch = transfer_keypoints(bwd, xy_to_rowcol(kp_photo), size)
    pred_photo = transfer_keypoints(fwd, xy_to_rowcol(kp_sketch), size)
    out = {"pred_sketch": xy_to_rowcol(pred_sketch), "pred_photo": xy_to_rowcol(pred_photo)}
    for a in alphas:
        out[alpha_key(a)] = torch.stack([pck(pred_sketch, xy_to_rowcol(kp_sketch), a, size),
                                         pck(pred_photo, xy_to_rowcol(kp_photo), a, size)], 1)
    return out


def alpha_key(alpha):
    """0.05 -> "pck05", 0.1 -> "pck10"."""
    return f"pck{round(alpha * 100):02d}"


def consistency(pred_a, pred_b, size=256):
    """The paper's consistency between two prediction sets (section 4.4): mean Euclidean distance between
    corresponding predicted keypoints (…, K, 2), normalised by the image size (0 = identical)."""
    if pred_a.shape != pred_b.shape:
        raise ValueError(f"consistency: shapes differ: {tuple(pred_a.shape)} vs {tuple(pred_b.shape)}")
    return float(torch.sqrt(((pred_a.double() - pred_b.double()) ** 2).sum(-1)).mean() / size)
