"""The benchmark a training run learns from and is scored on: its data (the synthetic benchmark generated when
it is the default and missing) and the PCK evaluation inside a run, which leaves the run as it was."""
from __future__ import annotations

import contextlib
import os
import warnings

import torch
from PIL import Image

from pscfast.data import PSCTestPairs
from pscfast.data.synthetic import generate
from pscfast.evaluation import Mismatched, evaluate, model_predictor
from pscfast.training import distributed as dist_utils
from pscfast.viz import batch_figure

SYNTHETIC_ROOT = "runs/synthetic"


def prepare_data(cfg, rank: int) -> tuple[str, str]:
    """(root, csv_dir) of ``cfg.data_root`` / ``cfg.csv_dir``; the synthetic benchmark is generated into its
    default root when missing (by rank 0, the others wait)."""
    csv_dir = cfg.csv_dir or cfg.data_root
    train_csv = os.path.join(csv_dir, "train_pairs_ps.csv")
    if not os.path.exists(train_csv):
        if os.path.normpath(cfg.data_root) != os.path.normpath(SYNTHETIC_ROOT):
            raise FileNotFoundError(f"{train_csv} not found (set --data-root/--csv-dir to a Sketchy + PSC6k copy)")
        if rank == 0:
            print(f"generating the synthetic benchmark into {cfg.data_root} ...", flush=True)
            generate(cfg.data_root, seed=0)
        dist_utils.barrier()
    return cfg.data_root, csv_dir


def evaluate_pck(cfg, model: torch.nn.Module, root: str, csv_dir: str, device, writer=None, step: int = 0) -> dict:
    """PCK of ``model`` (``predict_flow`` at ``cfg.image_size``) on the test CSV with the evaluation CLI's
    geometry, on the first ``cfg.eval_limit`` pairs when set, and under ``"mismatch"`` its PCK with each sketch
    paired with another pair's photo (pscfast.evaluation.Mismatched: what the model keeps without matching the
    pair); writes ``<cfg.out>/correspondence.png`` and logs all to TensorBoard's ``writer`` when given."""
    data = PSCTestPairs(root, os.path.join(csv_dir, "test_pairs_ps.csv"))
    if cfg.eval_limit:
        data = torch.utils.data.Subset(data, range(min(cfg.eval_limit, len(data))))
    predict = model_predictor(model, cfg.image_size)
    with untouched(model, device):
        result = evaluate(predict, data, cfg.eval_batch_size, device, progress=False)
        try:
            mismatch = evaluate(Mismatched(predict), data, cfg.eval_batch_size, device, progress=False)
            result["mismatch"] = {k: mismatch[k] for k in ("pck05", "pck10")}
        except ValueError as exc:  # a test batch that shows a single photo has no other photo to pair with
            warnings.warn(f"the mismatched-photo baseline is skipped: {exc}", stacklevel=2)
        picture = _picture(predict, data, device)
    Image.fromarray(picture).save(os.path.join(cfg.out, "correspondence.png"))
    if writer is not None:
        for k in ("pck05", "pck10"):
            writer.add_scalar(f"eval/{k}", result[k], step)
            if "mismatch" in result:
                writer.add_scalar(f"eval/mismatch_{k}", result["mismatch"][k], step)
        writer.add_image("eval/correspondence", picture, step, dataformats="HWC")
    return result


@contextlib.contextmanager
def untouched(model: torch.nn.Module, device):
    """Evaluate inside a training run without changing it: every module gets back its own train/eval mode
    (restoring the whole model's would put stage 2's frozen encoder BN in train mode), and the RNG state is
    restored (the data loader draws a seed), so a resumed run and one that evaluated in between stay equal."""
    modes = [(m, m.training) for m in model.modules()]
    devices = [device] if torch.device(device).type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _picture(predict, data, device, n: int = 4):
    items = [data[i] for i in range(min(n, len(data)))]
    photos = torch.stack([it["photo"] for it in items]).to(device)
    sketches = torch.stack([it["sketch"] for it in items]).to(device)
    fwd, bwd = predict(photos, sketches)
    return batch_figure(photos.cpu(), sketches.cpu(), fwd.cpu(), bwd.cpu(), n,
                        [it["kp_photo"] for it in items], [it["kp_sketch"] for it in items])
