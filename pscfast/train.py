"""`python train/run.py`: train PSC (stage 1 MoCo encoder, stage 2 STN warp estimator, stage 3 the refinement
levels beyond the paper's 16x16 flow), then evaluate PCK.

    python train/run.py                                  # small CPU run on the synthetic benchmark (minutes)
    python train/run.py --config train/configs/paper_r18.json --data-root /data/sketchy
    torchrun --nproc_per_node=8 train/run.py --config train/configs/paper_r101.json --data-root ...
    python train/run.py --model sfnet --help             # SFNet, with its own flags

Every field of pscfast.training.TrainConfig is a flag (--help lists them with their defaults); flags override
the config file. --epochs and --lr set every stage's. Errors are one line on stderr: exit 2 for bad input
(flags, config, data, checkpoints), 1 for a failed run (divergence, a full disk, an output folder in use by
another run).
"""
from __future__ import annotations

import argparse
import os
import sys

from pscfast._cli import one_line_errors
from pscfast._flags import ConfigParser
from pscfast.training import TrainConfig, pipeline, sfnet

PROG = "train/run.py"
ALIASES = {"epochs": ("epochs_encoder", "epochs_estimator", "epochs_refine"),
           "lr": ("lr_encoder", "lr_estimator", "lr_refine")}


def parse(argv=None) -> TrainConfig:
    return ConfigParser(TrainConfig, PROG, __doc__, ALIASES).parse(argv)


def parse_sfnet(argv=None) -> sfnet.SFNetConfig:
    return ConfigParser(sfnet.SFNetConfig, f"{PROG} --model sfnet", sfnet.pipeline.__doc__).parse(argv)


def split_model_flag(argv: list[str]) -> tuple[str, list[str]]:
    """("psc" | "sfnet", the other arguments) from a command line that may hold ``--model NAME``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", choices=["psc", "sfnet"], default="psc")
    a, rest = p.parse_known_args(argv)
    return a.model, rest


def _report(name: str, pck: dict, out: str) -> None:
    mismatch = pck.get("mismatch")
    print(f"{name}PCK@0.05 {100 * pck['pck05']:.2f}  PCK@0.10 {100 * pck['pck10']:.2f}  "
          f"(identity flow: {100 * pck['identity']['pck05']:.2f} / {100 * pck['identity']['pck10']:.2f}"
          + (f"; mismatched photos: {100 * mismatch['pck05']:.2f} / {100 * mismatch['pck10']:.2f})" if mismatch
             else ")"))
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
