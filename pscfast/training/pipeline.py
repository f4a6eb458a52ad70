"""``train(cfg)``: PSC's stages end to end (data, stages, checkpoints, TensorBoard, PCK evaluation): the encoder
(1), the STN (2) and the refinement levels (3, not in the paper).

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
from pscfast.models.refine import Refinement
from pscfast.training import distributed as dist_utils
from pscfast.training.benchmark import evaluate_pck, prepare_data
from pscfast.training.config import TrainConfig
from pscfast.training.encoder_stage import EncoderStage
from pscfast.training.estimator_stage import EstimatorStage
from pscfast.training.outdir import OutputLock
from pscfast.training.refine_stage import RefineStage
from pscfast.training.stage import PSCStage

STAGES = {1: EncoderStage, 2: EstimatorStage, 3: RefineStage}


def starts_from_imagenet(cfg: TrainConfig) -> bool:
    """Whether the run's encoder starts from ImageNet weights (``init`` and ``resume`` bring their own)."""
    return bool(cfg.pretrained or cfg.imagenet) and not (cfg.init or cfg.resume)


def refine_levels(cfg: TrainConfig) -> list[dict]:
    """The refinement levels stage 3 trains: one per ``refine_sizes``, each on ``refine_strides``, each with the
    local match start when ``refine_match``."""
    match = ({"match_temperature": cfg.refine_match_temperature, "match_window": cfg.refine_match_window,
              "match_median": cfg.refine_match_median} if cfg.refine_match else {})
    return [{"size": size, "strides": list(cfg.refine_strides), "max_displacement": cfg.refine_displacement,
             **match} for size in cfg.refine_sizes]


def build_model(cfg: TrainConfig, device) -> PSCNet:
    """The PSCNet a run starts from: random, with ImageNet weights in its encoder (``cfg.imagenet``, else the
    file that ships for the arch), or ``cfg.init``'s weights. Its refinement levels: the configured ones when
    the run trains stage 3 (new, unless ``cfg.init`` holds the same), else ``cfg.init``'s (none by default)."""
    init = load_checkpoint(cfg.init, cfg.arch, cfg.shared_bn) if cfg.init else None
    levels = init.refine.config if init is not None else []
    if 3 in cfg.stages():
        wanted = Refinement(refine_levels(cfg)).config  # with the levels' defaults filled in
        if levels and levels != wanted:
            raise ValueError(f"init: {cfg.init} holds the refinement levels {levels}, not the configured {wanted} "
                             "(--refine-sizes, --refine-strides, --refine-displacement, --refine-match*)")
        levels = wanted
    model = PSCNet(cfg.arch, cfg.shared_bn, backend=cfg.backend, match_start=cfg.match_start_config(),
                   refine=levels)
    if starts_from_imagenet(cfg):
        load_imagenet(model.encoder, cfg.imagenet)
    if init is not None:
        load_weights(model, init.state_dict(), f"init: {cfg.init}")
    return model.to(device)


def load_weights(model: PSCNet, state: dict, who: str) -> None:
    """``state`` into ``model``, strictly, except that a state without refinement levels leaves the model's new
    ones as they are (stage 3 on a model trained without them)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("refine.") for k in missing) or (missing and any(
            k.startswith("refine.") for k in state)):
        raise KeyError(f"{who}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")


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
        if stage.number > 1 and cfg.eval_every and epoch % cfg.eval_every == 0 and epoch != stage.epochs:
            evaluate_pck(cfg, model, root, csv_dir, device, writer, stage.step)

    history = {}
    for s in cfg.stages():
        if resume is not None and resume["training"]["stage"] > s:
            continue  # this stage finished before the checkpoint was written
        if resume is not None:
            load_weights(model, resume["model"], f"resume: {cfg.resume}")
        stage = STAGES[s](cfg, model, train_data, device, rank, world)
        if resume is not None and resume["training"]["stage"] == s:
            note = stage.load_state_dict(resume["training"])
            if note and rank == 0:
                print(note, flush=True)
        resume = None
        history[s] = stage.run(_logger(writer, s), on_epoch)
    pck = None
    if {2, 3} & set(cfg.stages()) and rank == 0:
        pck = evaluate_pck(cfg, model, root, csv_dir, device, writer, sum(len(h) for h in history.values()))
    if rank == 0:
        save_checkpoint(os.path.join(cfg.out, "final.pt"), model, config=cfg.__dict__)
    if writer is not None:
        writer.close()
    return {"history": history, "pck": pck, "model": model, "rank": rank}
