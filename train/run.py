"""Train PSC (stage 1 MoCo encoder, stage 2 STN warp estimator), then evaluate PCK.

    python train/run.py                                  # small CPU run on the synthetic benchmark (minutes)
    python train/run.py --config train/configs/paper_r18.json --data-root /data/sketchy
    torchrun --nproc_per_node=8 train/run.py --config train/configs/paper_r101.json --data-root ...

Flags override the config file; the defaults are pscfast.training.TrainConfig's. Errors are one line on
stderr: exit 2 for bad input (flags, config, data, checkpoints), 1 for a failed run (divergence, a full disk,
an output folder in use by another run).
"""
from pscfast.train import main

if __name__ == "__main__":
    main()
