"""`evaluate(predict_fn, dataset)`: PCK@0.05 / @0.10 of a flow predictor on PSC6k-format test pairs, with the
identity-flow baseline, a per-class table and the consistency with the annotations."""
import inspect

import torch
from torch.utils.data import DataLoader, Subset

from pscfast.data import normalize, resolve_classes
from pscfast.evaluation.pck import ALPHAS, alpha_key, consistency, pair_scores
from pscfast.ops._reference import identity_grid

IMAGE_SIZE = 256


def _base(dataset):
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def _class_filter(dataset, classes):
    names = getattr(_base(dataset), "class_names", None)
    if names is None:
        raise ValueError("classes: the dataset has no class_names (use PSCTestPairs)")
    wanted = set(resolve_classes(classes, names))
    rows = _base(dataset).rows
    if isinstance(dataset, Subset):
        keep = [i for i in range(len(dataset)) if rows[_root_index(dataset, i)]["class_id"] in wanted]
    else:
        keep = [i for i, r in enumerate(rows) if r["class_id"] in wanted]
    return Subset(dataset, keep)


def _root_index(dataset, i):
    while isinstance(dataset, Subset):
        i, dataset = dataset.indices[i], dataset.dataset
    return i


def _summary(scores):
    """scores: {key: (M, 2)} -> {key: mean over pairs and both directions}."""
    return {k: float(v.mean()) for k, v in scores.items()}


@torch.no_grad()
def evaluate(predict_fn, dataset, batch_size=16, device="cpu", classes=None, normalize_inputs=False,
             num_workers=0, progress=True, return_predictions=False):
    """PCK of `predict_fn` on `dataset` (PSCTestPairs, or a Subset of it).

    predict_fn(photo, sketch) -> (fwd, bwd): images (N, 3, 256, 256) on `device`, in [0, 1]
    (ImageNet-normalised when `normalize_inputs=True`); flows absolute grids (N, h, w, 2) in the release
    convention (fwd on the sketch grid pointing into the photo, bwd the reverse), any h = w (16 for PSC;
    upsampled to 256 before the lookup). A predict_fn with a `batch` parameter also receives the collated
    batch dict (paths, keypoints), as the ground-truth predictor needs.
    classes: ids or names to keep (held-out-category evaluation); None = all.

    Returns {"pck05", "pck10": fractions in [0, 1] over all keypoints of both directions,
             "photo_to_sketch", "sketch_to_photo": {"pck05", "pck10"} per direction,
             "identity": {"pck05", "pck10"} of the identity flow,
             "consistency": the paper's normalised mean distance between predictions and annotations,
             "per_class": {name: {"class_id", "pairs", "pck05", "pck10", "identity_pck05", "identity_pck10"}},
             "pairs": number of pairs, ["predictions": {"photo_to_sketch", "sketch_to_photo"} (M, 8, 2) (x, y)]}.
    """
    if classes is not None:
        dataset = _class_filter(dataset, classes)
    if len(dataset) == 0:
        raise ValueError("evaluate: the dataset is empty (after the class filter)")
    wants_batch = "batch" in inspect.signature(predict_fn).parameters
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if progress:
        from tqdm import tqdm
        loader = tqdm(loader, desc="evaluate", unit="batch", leave=False)
    keys = [alpha_key(a) for a in ALPHAS]
    acc = {k: [] for k in keys + ["id_" + k for k in keys] + ["class_id", "pred_sketch", "pred_photo",
                                                              "kp_sketch", "kp_photo"]}
    for batch in loader:
        photo, sketch = batch["photo"].to(device), batch["sketch"].to(device)
        if photo.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"evaluate: images must be {IMAGE_SIZE}x{IMAGE_SIZE}, got {tuple(photo.shape[-2:])}")
        if normalize_inputs:
            photo, sketch = normalize(photo), normalize(sketch)
        fwd, bwd = predict_fn(photo, sketch, batch=batch) if wants_batch else predict_fn(photo, sketch)
        n = photo.shape[0]
        for name, f in (("fwd", fwd), ("bwd", bwd)):
            if f.dim() != 4 or f.shape[0] != n or f.shape[-1] != 2 or f.shape[1] != f.shape[2]:
                raise ValueError(f"evaluate: predict_fn's {name} must be (N={n}, h, h, 2), got {tuple(f.shape)}")
        kp_photo, kp_sketch = batch["kp_photo"].float(), batch["kp_sketch"].float()
        s = pair_scores(fwd.detach().float().cpu(), bwd.detach().float().cpu(), kp_photo, kp_sketch, IMAGE_SIZE)
        ident = identity_grid(n, 16, 16, dtype=torch.float32)
        s_id = pair_scores(ident, ident, kp_photo, kp_sketch, IMAGE_SIZE)
        for k in keys:
            acc[k].append(s[k])
            acc["id_" + k].append(s_id[k])
        acc["class_id"].append(torch.as_tensor(batch["class_id"]))
        for k in ("pred_sketch", "pred_photo"):
            acc[k].append(s[k])
        acc["kp_sketch"].append(kp_sketch)
        acc["kp_photo"].append(kp_photo)
    cat = {k: torch.cat(v) for k, v in acc.items()}
    result = _summary({k: cat[k] for k in keys})
    result["photo_to_sketch"] = {k: float(cat[k][:, 0].mean()) for k in keys}
    result["sketch_to_photo"] = {k: float(cat[k][:, 1].mean()) for k in keys}
    result["identity"] = {k: float(cat["id_" + k].mean()) for k in keys}
    result["consistency"] = consistency(torch.cat([cat["pred_sketch"], cat["pred_photo"]]),
                                        torch.cat([cat["kp_sketch"], cat["kp_photo"]]), IMAGE_SIZE)
    names = getattr(_base(dataset), "class_names", {})
    table = {}
    for cid in sorted(set(cat["class_id"].tolist())):
        sel = cat["class_id"] == cid
        row = {"class_id": cid, "pairs": int(sel.sum())}
        row.update({k: float(cat[k][sel].mean()) for k in keys})
        row.update({"identity_" + k: float(cat["id_" + k][sel].mean()) for k in keys})
        table[names.get(cid, str(cid))] = row
    result["per_class"] = table
    result["pairs"] = len(dataset)
    if return_predictions:
        result["predictions"] = {"photo_to_sketch": cat["pred_sketch"], "sketch_to_photo": cat["pred_photo"]}
    return result


def format_table(result):
    """The per-class table and totals as aligned text (percentages)."""
    lines = [f"{'class':<20} {'pairs':>5} {'PCK@0.05':>9} {'PCK@0.10':>9} {'id@0.05':>8} {'id@0.10':>8}"]
    for name, r in result["per_class"].items():
        lines.append(f"{name:<20} {r['pairs']:>5} {100 * r['pck05']:>9.2f} {100 * r['pck10']:>9.2f} "
                     f"{100 * r['identity_pck05']:>8.2f} {100 * r['identity_pck10']:>8.2f}")
    lines.append(f"{'all':<20} {result['pairs']:>5} {100 * result['pck05']:>9.2f} {100 * result['pck10']:>9.2f} "
                 f"{100 * result['identity']['pck05']:>8.2f} {100 * result['identity']['pck10']:>8.2f}")
    return "\n".join(lines)
