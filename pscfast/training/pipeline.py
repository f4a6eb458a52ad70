"""``train(cfg)``: both PSC stages end to end (data, stages, checkpoints, TensorBoard, PCK evaluation).

One run at a time per output folder (pscfast.training.outdir). ``--resume`` reads a checkpoint that this
module wrote during training (``stage{s}_last.pt``, ``stage{s}_epoch{e}.pt``) with ``weights_only=True``, and
refuses one of another architecture or BN sharing than the run's configuration.
"""
from __future__ import annotations

import contextlib
import os

import torch

from pscfast.data import PSCTrainPairs
from pscfast.models import PSCNet, imagenet_file, load_checkpoint, load_imagenet, save_checkpoint
from pscfast.models._load import load_file
from pscfast.models.checkpoint import FORMAT
from pscfast.training import distributed as dist_utils
from pscfast.training.benchmark import evaluate_pck, prepare_data
from pscfast.training.config import TrainConfig
from pscfast.training.encoder_stage import EncoderStage
from pscfast.training.estimator_stage import EstimatorStage
from pscfast.training.outdir import OutputLock
from pscfast.training.stage import PSCStage

STAGES = {1: EncoderStage, 2: EstimatorStage}


def starts_from_imagenet(cfg: TrainConfig) -> bool:
    """Whether the run's encoder starts from ImageNet weights (``init`` and ``resume`` bring their own)."""
    return bool(cfg.pretrained or cfg.imagenet) and not (cfg.init or cfg.resume)


def build_model(cfg: TrainConfig, device) -> PSCNet:
    """The PSCNet a run starts from: random, with ImageNet weights in its encoder (``cfg.imagenet``, else the
    file that ships for the arch), or ``cfg.init``'s weights."""
    model = PSCNet(cfg.arch, cfg.shared_bn, backend=cfg.backend, match_start=cfg.match_start_config())
    if starts_from_imagenet(cfg):
        load_imagenet(model.encoder, cfg.imagenet)
    if cfg.init:
        model.load_state_dict(load_checkpoint(cfg.init, cfg.arch, cfg.shared_bn).state_dict())
    return model.to(device)


def checkpoint_path(cfg: TrainConfig, stage: int, epoch: int | None = None) -> str:
    name = f"stage{stage}_last.pt" if epoch is None else f"stage{stage}_epoch{epoch:04d}.pt"
    return os.path.join(cfg.out, name)


def save_stage(cfg: TrainConfig, stage: PSCStage, epoch: int) -> None:
    """``stage{s}_last.pt`` after every epoch, and ``stage{s}_epoch{e}.pt`` every ``save_every`` epochs
    before the last."""
    extra = {"training": stage.state_dict(epoch), "config": cfg.__dict__}
    save_checkpoint(checkpoint_path(cfg, stage.number), stage.model, **extra)
    if epoch % cfg.save_every == 0 and epoch != stage.epochs:
        save_checkpoint(checkpoint_path(cfg, stage.number, epoch), stage.model, **extra)


def load_resume(cfg: TrainConfig) -> dict | None:
    """The checkpoint ``cfg.resume`` names (tensors and plain containers only), checked against ``cfg``."""
    if not cfg.resume:
        return None
    who = "resume"
    ckpt = load_file(cfg.resume, who)
    if not (isinstance(ckpt, dict) and ckpt.get("format") == FORMAT and isinstance(ckpt.get("training"), dict)):
        raise ValueError(f"{who}: {cfg.resume} holds no training state: resume from a checkpoint written during "
                         "training (stage1_last.pt, stage2_last.pt, stage<s>_epoch<e>.pt); start from final.pt or "
                         "a released checkpoint with --init")
    if ckpt["arch"] != cfg.arch:
        raise ValueError(f"{who}: {cfg.resume} holds a {ckpt['arch']} model but the run is configured for "
                         f"{cfg.arch}: pass --arch {ckpt['arch']} (or the run's --config)")
    if ckpt["shared_bn"] != cfg.shared_bn:
        raise ValueError(f"{who}: {cfg.resume} was trained with shared_bn={ckpt['shared_bn']} but the run has "
                         f"shared_bn={cfg.shared_bn}: {'pass' if ckpt['shared_bn'] else 'drop'} --shared-bn "
                         "(or the run's --config)")
    stage = ckpt["training"].get("stage")
    if stage not in cfg.stages():
        raise ValueError(f"{who}: {cfg.resume} was written in stage {stage}, which stage={cfg.stage!r} does not run")
    return ckpt


def train(cfg: TrainConfig) -> dict:
    """Run the configured stages; returns {"history": {stage: [losses]}, "pck": final evaluation or None,
    "model", "rank"}. Rank 0 holds the output folder's lock for the whole run (another live run there is
    refused)."""
    rank, world, device = dist_utils.init(cfg.device)
    with OutputLock(cfg.out, "train") if rank == 0 else contextlib.nullcontext():
        return _train(cfg, rank, world, device)


def _writer(cfg: TrainConfig, rank: int):
    if rank != 0 or not cfg.tensorboard:
        return None
    try:  # tensorboard is an optional dependency (the "train" extra)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(cfg.out, "tb"))


def _logger(writer, stage: int):
    """TrainingLoop's ``log`` writing each value to TensorBoard as ``stage<s>/<name>``."""
    if writer is None:
        return None

    def log(step: int, values: dict) -> None:
        for k, v in values.items():
            writer.add_scalar(f"stage{stage}/{k}", v, step)
    return log


def _train(cfg: TrainConfig, rank: int, world: int, device) -> dict:
    resume = load_resume(cfg)
    if starts_from_imagenet(cfg):
        imagenet_file(cfg.arch, cfg.imagenet)  # the weights exist before any data is generated
    torch.manual_seed(cfg.seed)
    root, csv_dir = prepare_data(cfg, rank)
    train_data = PSCTrainPairs(root, os.path.join(csv_dir, "train_pairs_ps.csv"))
    model = build_model(cfg, device)
    writer = _writer(cfg, rank)

    def on_epoch(stage: PSCStage, epoch: int):
        if rank != 0:
            return
        save_stage(cfg, stage, epoch)
        if stage.number == 2 and cfg.eval_every and epoch % cfg.eval_every == 0 and epoch != stage.epochs:
            evaluate_pck(cfg, model, root, csv_dir, device, writer, stage.step)

    history = {}
    for s in cfg.stages():
        if resume is not None and resume["training"]["stage"] > s:
            continue  # this stage finished before the checkpoint was written
        if resume is not None:
            model.load_state_dict(resume["model"])
        stage = STAGES[s](cfg, model, train_data, device, rank, world)
        if resume is not None and resume["training"]["stage"] == s:
            note = stage.load_state_dict(resume["training"])
            if note and rank == 0:
                print(note, flush=True)
        resume = None
        history[s] = stage.run(_logger(writer, s), on_epoch)
    pck = None
    if 2 in cfg.stages() and rank == 0:
        pck = evaluate_pck(cfg, model, root, csv_dir, device, writer, sum(len(h) for h in history.values()))
    if rank == 0:
        save_checkpoint(os.path.join(cfg.out, "final.pt"), model, config=cfg.__dict__)
    if writer is not None:
        writer.close()
    return {"history": history, "pck": pck, "model": model, "rank": rank}
