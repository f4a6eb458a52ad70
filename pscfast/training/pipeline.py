"""``train(cfg)``: both PSC stages end to end (data, stages, checkpoints, TensorBoard, PCK evaluation).

One run at a time per output folder (pscfast.training.outdir). ``--resume`` reads a checkpoint that this
module wrote during training (``stage{s}_last.pt``, ``stage{s}_epoch{e}.pt``) with ``weights_only=True``, and
refuses one of another architecture or BN sharing than the run's configuration.
"""
from __future__ import annotations

import contextlib
import os

import torch
from PIL import Image

from pscfast.data import PSCTestPairs, PSCTrainPairs
from pscfast.data.synthetic import generate
from pscfast.evaluation import evaluate, model_predictor
from pscfast.models import PSCNet, save_checkpoint
from pscfast.models._load import load_file
from pscfast.models.checkpoint import FORMAT
from pscfast.training import distributed as dist_utils
from pscfast.training.config import TrainConfig
from pscfast.training.outdir import OutputLock
from pscfast.training.trainer import Stage, build_model, save_stage
from pscfast.viz import batch_figure

SYNTHETIC_ROOT = "runs/synthetic"


def prepare_data(cfg: TrainConfig, rank: int) -> tuple[str, str]:
    """(root, csv_dir); the synthetic benchmark is generated into its default root when missing."""
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


def evaluate_pck(cfg: TrainConfig, model: PSCNet, root: str, csv_dir: str, device, writer=None, step=0) -> dict:
    """PCK on the test CSV with the evaluation CLI's geometry; logs it and a correspondence picture."""
    data = PSCTestPairs(root, os.path.join(csv_dir, "test_pairs_ps.csv"))
    if cfg.eval_limit:
        data = torch.utils.data.Subset(data, range(min(cfg.eval_limit, len(data))))
    predict = model_predictor(model, cfg.image_size)
    with untouched(model, device):
        result = evaluate(predict, data, cfg.eval_batch_size, device, progress=False)
        picture = _picture(predict, data, device)
    Image.fromarray(picture).save(os.path.join(cfg.out, "correspondence.png"))
    if writer is not None:
        for k in ("pck05", "pck10"):
            writer.add_scalar(f"eval/{k}", result[k], step)
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


def _writer(cfg: TrainConfig, rank: int):
    if rank != 0 or not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(os.path.join(cfg.out, "tb"))


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
    """Run the configured stages; returns {"history": {stage: [losses]}, "pck": final evaluation or None}.

    Rank 0 holds the output folder's lock for the whole run (another live run there is refused)."""
    rank, world, device = dist_utils.init(cfg.device)
    with OutputLock(cfg.out, "train") if rank == 0 else contextlib.nullcontext():
        return _train(cfg, rank, world, device)


def _train(cfg: TrainConfig, rank: int, world: int, device) -> dict:
    resume = load_resume(cfg)
    torch.manual_seed(cfg.seed)
    root, csv_dir = prepare_data(cfg, rank)
    train_data = PSCTrainPairs(root, os.path.join(csv_dir, "train_pairs_ps.csv"))
    model = build_model(cfg, device)
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
            note = stage.load_state_dict(resume["training"])
            if note and rank == 0:
                print(note, flush=True)
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
