"""``train(cfg)``: both PSC stages end to end (data, stages, checkpoints, TensorBoard, PCK evaluation)."""
from __future__ import annotations

import os
import warnings

import torch

from pscfast.data import normalize
from pscfast.models import PSCNet, save_checkpoint
from pscfast.training import distributed as dist_utils
from pscfast.training.config import TrainConfig
from pscfast.training.trainer import Stage, build_model, resize, save_stage

SYNTHETIC_ROOT = "runs/synthetic"


def prepare_data(cfg: TrainConfig, rank: int) -> tuple[str, str]:
    """(root, csv_dir); the synthetic benchmark is generated into its default root when missing."""
    csv_dir = cfg.csv_dir or cfg.data_root
    train_csv = os.path.join(csv_dir, "train_pairs_ps.csv")
    if not os.path.exists(train_csv):
        if os.path.normpath(cfg.data_root) != os.path.normpath(SYNTHETIC_ROOT):
            raise FileNotFoundError(f"{train_csv} not found (set --data-root/--csv-dir to a Sketchy + PSC6k copy)")
        if rank == 0:
            from pscfast.data.synthetic import generate
            print(f"generating the synthetic benchmark into {cfg.data_root} ...", flush=True)
            generate(cfg.data_root, seed=0)
        dist_utils.barrier()
    return cfg.data_root, csv_dir


def predictor(model: PSCNet, image_size: int):
    """predict_fn for pscfast.evaluation: [0, 1] images (N, 3, H, W) -> (fwd, bwd) 16x16 grids."""
    def predict(photo: torch.Tensor, sketch: torch.Tensor):
        model.eval()
        return model.predict_flow(normalize(resize(photo, image_size)), normalize(resize(sketch, image_size)))
    return predict


def evaluate_pck(cfg: TrainConfig, model: PSCNet, root: str, csv_dir: str, device, writer=None, step=0) -> dict:
    """PCK on the test CSV with the evaluation CLI's geometry, and under ``"mismatch"`` the PCK with each sketch
    paired with another pair's photo (pscfast.evaluation.Mismatched: what the model keeps without the photo);
    logs them and a correspondence picture."""
    from pscfast.data import PSCTestPairs
    from pscfast.evaluation import Mismatched, evaluate
    data = PSCTestPairs(root, os.path.join(csv_dir, "test_pairs_ps.csv"))
    if cfg.eval_limit:
        data = torch.utils.data.Subset(data, range(min(cfg.eval_limit, len(data))))
    was_training = model.training
    predict = predictor(model, cfg.image_size)
    result = evaluate(predict, data, cfg.eval_batch_size, device, progress=False)
    try:
        mismatch = evaluate(Mismatched(predict), data, cfg.eval_batch_size, device, progress=False)
        result["mismatch"] = {k: mismatch[k] for k in ("pck05", "pck10")}
    except ValueError as exc:  # a test batch that shows a single photo has no other photo to pair with
        warnings.warn(f"the mismatched-photo baseline is skipped: {exc}", stacklevel=2)
    picture = _picture(predict, data, device)
    model.train(was_training)
    if picture is not None:
        from PIL import Image
        Image.fromarray(picture).save(os.path.join(cfg.out, "correspondence.png"))
    if writer is not None:
        for k in ("pck05", "pck10"):
            writer.add_scalar(f"eval/{k}", result[k], step)
            if "mismatch" in result:
                writer.add_scalar(f"eval/mismatch_{k}", result["mismatch"][k], step)
        if picture is not None:
            writer.add_image("eval/correspondence", picture, step, dataformats="HWC")
    return result


def _picture(predict, data, device, n: int = 4):
    try:
        from pscfast.viz import batch_figure
    except ImportError:
        return None
    items = [data[i] for i in range(min(n, len(data)))]
    photos = torch.stack([it["photo"] for it in items]).to(device)
    sketches = torch.stack([it["sketch"] for it in items]).to(device)
    fwd, bwd = predict(photos, sketches)
    return batch_figure(photos.cpu(), sketches.cpu(), fwd.cpu(), bwd.cpu(), n,
                        [it["kp_photo"] for it in items], [it["kp_sketch"] for it in items])


def _writer(cfg: TrainConfig, rank: int):
    if rank != 0 or not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(cfg.out, "tb"))


def train(cfg: TrainConfig) -> dict:
    """Run the configured stages; returns {"history": {stage: [losses]}, "pck": final evaluation or None}."""
    rank, world, device = dist_utils.init(cfg.device)
    torch.manual_seed(cfg.seed)
    root, csv_dir = prepare_data(cfg, rank)
    from pscfast.data import PSCTrainPairs
    train_data = PSCTrainPairs(root, os.path.join(csv_dir, "train_pairs_ps.csv"))
    model = build_model(cfg, device)
    resume = torch.load(cfg.resume, map_location="cpu", weights_only=False) if cfg.resume else None
    writer = _writer(cfg, rank)
    log = None
    if writer is not None:
        def log(stage, step, values):
            for k, v in values.items():
                writer.add_scalar(f"stage{stage}/{k}", v, step)

    def on_epoch(stage: Stage, epoch: int):
        save_stage(cfg, stage, epoch, rank)
        if stage.stage == 2 and cfg.eval_every and epoch % cfg.eval_every == 0 and epoch != stage.epochs and rank == 0:
            evaluate_pck(cfg, model, root, csv_dir, device, writer, stage.step)

    history = {}
    for s in cfg.stages():
        if resume is not None and resume["training"]["stage"] > s:
            continue  # this stage finished before the checkpoint was written
        if resume is not None:
            model.load_state_dict(resume["model"])
        stage = Stage(cfg, s, model, train_data, device, rank, world)
        if resume is not None and resume["training"]["stage"] == s:
            stage.load_state_dict(resume["training"])
        resume = None
        history[s] = stage.run(log, on_epoch)
    pck = None
    if 2 in cfg.stages() and rank == 0:
        pck = evaluate_pck(cfg, model, root, csv_dir, device, writer, sum(len(h) for h in history.values()))
    if rank == 0:
        save_checkpoint(os.path.join(cfg.out, "final.pt"), model, config=cfg.__dict__)
    if writer is not None:
        writer.close()
    return {"history": history, "pck": pck, "model": model, "rank": rank}
