"""Training SFNet on photo-sketch pairs with foreground masks, and its PCK evaluation.

    python train/run.py --model sfnet                        # short CPU run on the synthetic benchmark
    python train/run.py --model sfnet --arch resnet101 --init psc.pt --lr 3e-5 --epochs 40 \
        --lr-decay-epoch 30 --batch-size 16 --data-root ...

Adam (the paper's betas) on the adaptation layers only; the backbone is frozen (random, ImageNet via
``--imagenet`` or a PSC checkpoint's encoder via ``--init``). The paper trains 40 epochs at lr 3e-5, divided
by 5 after 30 epochs, batch 16. The defaults (16 epochs of 6 steps at lr 1e-3 on the synthetic benchmark)
take 1.5 s of CPU time a step on one thread (96 steps; measured 2026-12-05, docs/experiments.md).
"""
from __future__ import annotations

import dataclasses
import os

import torch

from pscfast._device import choose_device
from pscfast.models import save_checkpoint
from pscfast.training.benchmark import evaluate_pck, prepare_data
from pscfast.training.outdir import OutputLock
from pscfast.training.sfnet.config import SFNetConfig
from pscfast.training.sfnet.data import MaskedPairs
from pscfast.training.sfnet.model import KIND, build
from pscfast.training.sfnet.trainer import SFNetTrainer


def train(cfg: SFNetConfig) -> dict:
    """Train, save ``<out>/final.pt``, evaluate PCK. Returns {"history": per-step losses, "pck", "model"}.
    Holds the output folder's lock for the run (pscfast.training.outdir)."""
    with OutputLock(cfg.out, "train"):
        return _train(cfg)


def _train(cfg: SFNetConfig) -> dict:
    device = choose_device(cfg.device, "train: device")
    torch.manual_seed(cfg.seed)
    root, csv_dir = prepare_data(cfg, rank=0)
    data = MaskedPairs(root, os.path.join(csv_dir, "train_pairs_ps.csv"))
    model = build(cfg, device)
    history = SFNetTrainer(cfg, model, data, device).run()
    save_checkpoint(os.path.join(cfg.out, "final.pt"), model, model_kind=KIND, beta=cfg.beta, sigma=cfg.sigma,
                    config=dataclasses.asdict(cfg))
    pck = evaluate_pck(cfg, model, root, csv_dir, device)
    return {"history": history, "pck": pck, "model": model}
