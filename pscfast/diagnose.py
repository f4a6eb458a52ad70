"""Diagnostics of an encoder and of the pairing: what features reach without the warp estimator, and what a
predictor keeps when the photo does not match the sketch. Scored as `python -m pscfast.evaluate` scores.

    python -m pscfast.diagnose --data-root R --checkpoint X --probe [--image-size 128] [--control]
    python -m pscfast.diagnose --data-root R --checkpoint random --match [--mismatch | --control]
    python -m pscfast.diagnose --data-root R --checkpoint pretrained --match [--image-size 128]
    python -m pscfast.diagnose --data-root R --checkpoint X --mismatch

`--probe` scores, instead of the checkpoint's STN, flows optimised per test pair against the stage-2 loss
through the checkpoint's frozen encoder (pscfast.evaluation.probe): whether these features can lead a warp
estimator past the identity at all. `--match` scores nearest-neighbour matching of the encoder's features
(pscfast.evaluation.matching), in seconds. `--checkpoint random` takes a randomly initialised encoder (`--arch`,
default resnet18, seed 0), `--checkpoint pretrained` an ImageNet-pretrained one as it installs (`--arch`,
default efficientnet_lite0, whose weights ship in its package). `--control` (synthetic benchmark only)
replaces each sketch by its photo under the true deformation, where both must beat the identity. `--mismatch`
scores the probe, the matching or, alone, the checkpoint's model with each sketch paired with another pair's
photo (pscfast.evaluation.mismatch): what a predictor keeps there does not come from matching the pair. Errors
are one line (exit 2 for bad input, 1 for a failed run).
"""
import argparse
import sys

import torch

from pscfast import _eval_cli
from pscfast._cli import one_line_errors
from pscfast.evaluation import FeatureMatch, FlowProbe, GroundTruthFlows, Mismatched, model_predictor
from pscfast.models import build_encoder, load_imagenet

PROG = "pscfast.diagnose"
ENCODERS = {"random": "resnet18", "pretrained": "efficientnet_lite0"}  # --checkpoint NAME: its default arch


def encoder(a: argparse.Namespace):
    """The checkpoint's encoder (or a random one, seed 0, or an ImageNet-pretrained one) and the image size to
    run it at."""
    if a.checkpoint in ENCODERS:
        torch.manual_seed(0)
        enc = build_encoder(a.arch or ENCODERS[a.checkpoint])
        if a.checkpoint == "pretrained":
            load_imagenet(enc)
        return enc.to(a.device), a.image_size or 256
    model, size = _eval_cli.load_model(a)
    return model.encoder, size


def predictor(a: argparse.Namespace):
    """(predict_fn, its name) of the requested diagnostic."""
    if a.probe or a.match:
        enc, size = encoder(a)
        control = GroundTruthFlows(a.csv_dir or a.data_root) if a.control else None
        if a.probe:
            predict = FlowProbe(enc, a.probe_steps, a.probe_lr, size, control=control, progress=True)
            what = f"probe of {a.checkpoint}"
        else:
            predict, what = FeatureMatch(enc, size, control), f"feature matching of {a.checkpoint}"
        if a.control:
            what += " (control)"
    else:
        model, size = _eval_cli.load_model(a)
        predict, what = model_predictor(model, size), a.checkpoint
    if a.mismatch:
        predict, what = Mismatched(predict), what + " (mismatched photos)"
    return predict, what


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="pscfast or release checkpoint, or 'random' / 'pretrained' "
                    "(an encoder with random or ImageNet weights, for --probe or --match)")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--probe", action="store_true", help="score flows optimised against the stage-2 loss")
    how.add_argument("--match", action="store_true", help="score nearest-neighbour matching of the features")
    ap.add_argument("--probe-steps", type=int, default=50, help="Adam steps per batch (default 50)")
    ap.add_argument("--probe-lr", type=float, default=0.005, help="Adam learning rate (default 0.005)")
    extra = ap.add_mutually_exclusive_group()
    extra.add_argument("--control", action="store_true",
                       help="positive control of --probe or --match: sketch = photo under the true warp")
    extra.add_argument("--mismatch", action="store_true",
                       help="each sketch paired with another pair's photo: the baseline that matching must beat")
    _eval_cli.add_arguments(ap)
    return ap


def main(argv=None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    _eval_cli.check_arguments(ap, a)
    features = a.probe or a.match
    if a.control and not features:
        ap.error("--control goes with --probe or --match")
    if a.checkpoint in ENCODERS and not features:
        ap.error(f"--checkpoint {a.checkpoint} goes with --probe or --match")
    if not (features or a.mismatch):
        ap.error("choose a diagnostic: --probe, --match or --mismatch")
    if a.checkpoint == "identity":
        ap.error("--checkpoint identity: the identity flow looks at no image; give a checkpoint file (or random "
                 "with --probe or --match)")
    with one_line_errors(PROG):
        _eval_cli.prepare(a)
        data = _eval_cli.test_pairs(a)
        result = _eval_cli.score(data, *predictor(a), a)
        _eval_cli.report(result)
        _eval_cli.write(a, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
