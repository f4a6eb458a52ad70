"""`python train/run.py`: train PSC (stage 1 MoCo encoder, stage 2 STN warp estimator), then evaluate PCK.

    python train/run.py                                  # small CPU run on the synthetic benchmark (minutes)
    python train/run.py --config train/configs/paper_r18.json --data-root /data/sketchy
    torchrun --nproc_per_node=8 train/run.py --config train/configs/paper_r101.json --data-root ...
    python train/run.py --model sfnet --help             # SFNet, with its own flags

Flags override the config file; the defaults are pscfast.training.TrainConfig's. Errors are one line on stderr: exit 2 for bad input
(flags, config, data, checkpoints), 1 for a failed run (divergence, a full disk, an output folder in use by
another run).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from pscfast._cli import one_line_errors
from pscfast.training import TrainConfig, pipeline, sfnet

PROG = "train/run.py"


def parse(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file of TrainConfig fields (train/configs/paper_r18.json, ...)")
    p.add_argument("--stage", choices=["encoder", "estimator", "both", "1", "2"])
    p.add_argument("--arch", choices=["resnet18", "resnet50", "resnet101"])
    p.add_argument("--shared-bn", action="store_true", default=None, help="the release's single BN per pair")
    p.add_argument("--data-root")
    p.add_argument("--csv-dir")
    p.add_argument("--epochs", type=int, help="epochs of each stage")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate of the stages run (with --resume it replaces the "
                   "checkpoint's: the schedule goes on at the new scale)")
    p.add_argument("--moco-k", type=int, help="MoCo queue length (below the number of training pairs)")
    p.add_argument("--moco-m", type=float, help="MoCo key-encoder momentum")
    p.add_argument("--moco-t", type=float, help="MoCo softmax temperature")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="the release's augmentation in both stages (the paper's configs: on; the default run: off)")
    p.add_argument("--backend", help="pscfast.ops backend (torch = the reference ops)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "none"])
    p.add_argument("--compile", nargs="?", const=True, default=None, metavar="BACKEND",
                   help="torch.compile the encoders (stage 1) / the STN (stage 2); backend default inductor")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--imagenet", help="local torchvision/MoCo ImageNet checkpoint for the encoder")
    p.add_argument("--init", help="pscfast or release checkpoint to start from")
    p.add_argument("--out")
    p.add_argument("--resume", help="a stage checkpoint written by this script (same --arch, --shared-bn)")
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--eval-limit", type=int)
    a = p.parse_args(argv)
    over = dict(stage=a.stage, arch=a.arch, shared_bn=a.shared_bn, data_root=a.data_root, csv_dir=a.csv_dir,
                max_steps_per_epoch=a.max_steps_per_epoch, batch_size=a.batch_size, image_size=a.image_size,
                moco_k=a.moco_k, moco_m=a.moco_m, moco_t=a.moco_t, augment=a.augment, backend=a.backend,
                amp=a.amp, compile=a.compile, channels_last=a.channels_last, imagenet=a.imagenet, init=a.init,
                out=a.out, resume=a.resume, device=a.device, seed=a.seed, workers=a.workers, eval_limit=a.eval_limit,
                epochs_encoder=a.epochs, epochs_estimator=a.epochs, lr_encoder=a.lr, lr_estimator=a.lr)
    try:
        return TrainConfig.from_json(a.config, **over) if a.config else TrainConfig().replace(**over)
    except (ValueError, OSError) as exc:  # a bad value or config file: one line, not a traceback
        p.error(str(exc))


def parse_sfnet(argv=None) -> sfnet.SFNetConfig:
    p = argparse.ArgumentParser(prog="train/run.py --model sfnet", description=sfnet.pipeline.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    fields = {f.name: f for f in dataclasses.fields(sfnet.SFNetConfig)}
    for name, f in fields.items():
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            p.add_argument(flag, type=kind, default=None)
    a = vars(p.parse_args(argv))
    try:
        return dataclasses.replace(sfnet.SFNetConfig(), **{k: v for k, v in a.items() if v is not None})
    except ValueError as exc:  # a bad value: one line, not a traceback
        p.error(str(exc))


def split_model_flag(argv: list[str]) -> tuple[str, list[str]]:
    """("psc" | "sfnet", the other arguments) from a command line that may hold ``--model NAME``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", choices=["psc", "sfnet"], default="psc")
    a, rest = p.parse_known_args(argv)
    return a.model, rest


def _report(name: str, pck: dict, out: str) -> None:
    print(f"{name}PCK@0.05 {100 * pck['pck05']:.2f}  PCK@0.10 {100 * pck['pck10']:.2f}  "
          f"(identity flow: {100 * pck['identity']['pck05']:.2f} / {100 * pck['identity']['pck10']:.2f})")
    print(f"checkpoint: {os.path.join(out, 'final.pt')}")


def main(argv=None) -> None:
    model, argv = split_model_flag(sys.argv[1:] if argv is None else argv)
    if model == "sfnet":
        cfg = parse_sfnet(argv)
        with one_line_errors(f"{PROG} --model sfnet"):
            result = sfnet.train(cfg)
        _report("SFNet ", result["pck"], cfg.out)
        return
    cfg = parse(argv)
    with one_line_errors(PROG):
        result = pipeline.train(cfg)
    if result["pck"] is not None and result["rank"] == 0:
        _report("", result["pck"], cfg.out)
