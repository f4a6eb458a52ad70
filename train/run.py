"""Train PSC (stage 1 MoCo encoder, stage 2 STN warp estimator), then evaluate PCK.

    python train/run.py                                  # small CPU run on the synthetic benchmark (minutes)
    python train/run.py --config train/configs/paper_r18.json --data-root /data/sketchy
    torchrun --nproc_per_node=8 train/run.py --config train/configs/paper_r101.json --data-root ...

Flags override the config file; the defaults are pscfast.training.TrainConfig's.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout

from pscfast.models import ARCHS, imagenet_file  # noqa: E402
from pscfast.training import TrainConfig, train  # noqa: E402


def parse(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="JSON file of TrainConfig fields (train/configs/paper_r18.json, ...)")
    p.add_argument("--stage", choices=["encoder", "estimator", "both", "1", "2"])
    p.add_argument("--arch", choices=ARCHS, help="the encoder (default efficientnet_lite0)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start the encoder from ImageNet weights (default; efficientnet_lite0's ship in its package)")
    p.add_argument("--shared-bn", action="store_true", default=None, help="the release's single BN per pair")
    p.add_argument("--data-root")
    p.add_argument("--csv-dir")
    p.add_argument("--epochs", type=int, help="epochs of each stage")
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate of the stages run")
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
    p.add_argument("--imagenet", help="local ImageNet weights for the encoder (torchvision/MoCo for a ResNet)")
    p.add_argument("--init", help="pscfast or release checkpoint to start from")
    p.add_argument("--out")
    p.add_argument("--resume", help="a checkpoint written by this script")
    p.add_argument("--device")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--eval-limit", type=int)
    a = p.parse_args(argv)
    over = dict(stage=a.stage, arch=a.arch, shared_bn=a.shared_bn, data_root=a.data_root, csv_dir=a.csv_dir,
                max_steps_per_epoch=a.max_steps_per_epoch, batch_size=a.batch_size, image_size=a.image_size,
                moco_k=a.moco_k, moco_m=a.moco_m, moco_t=a.moco_t, augment=a.augment, backend=a.backend,
                amp=a.amp, compile=a.compile, channels_last=a.channels_last, pretrained=a.pretrained,
                imagenet=a.imagenet, init=a.init, out=a.out, resume=a.resume, device=a.device, seed=a.seed,
                workers=a.workers, eval_limit=a.eval_limit,
                epochs_encoder=a.epochs, epochs_estimator=a.epochs, lr_encoder=a.lr, lr_estimator=a.lr)
    try:
        cfg = TrainConfig.from_json(a.config, **over) if a.config else TrainConfig().replace(**over)
        if (cfg.pretrained or cfg.imagenet) and not (cfg.init or cfg.resume):
            imagenet_file(cfg.arch, cfg.imagenet)  # the weights exist before any data is generated
        return cfg
    except (ValueError, OSError, ImportError) as exc:  # a bad value, config file or install: one line
        p.error(str(exc))


def main(argv=None) -> None:
    from pscfast.training.sfnet import main as sfnet_main, split_model_flag
    model, argv = split_model_flag(sys.argv[1:] if argv is None else argv)
    if model == "sfnet":  # SFNet has its own flags: train/run.py --model sfnet --help
        return sfnet_main(argv)
    cfg = parse(argv)
    result = train(cfg)
    pck = result["pck"]
    if pck is not None and result["rank"] == 0:
        mismatch = pck.get("mismatch")
        print(f"PCK@0.05 {100 * pck['pck05']:.2f}  PCK@0.10 {100 * pck['pck10']:.2f}  "
              f"(identity flow: {100 * pck['identity']['pck05']:.2f} / {100 * pck['identity']['pck10']:.2f}"
              + (f"; mismatched photos: {100 * mismatch['pck05']:.2f} / {100 * mismatch['pck10']:.2f})"
                 if mismatch else ")"))
        print(f"checkpoint: {os.path.join(cfg.out, 'final.pt')}")


if __name__ == "__main__":
    main()
