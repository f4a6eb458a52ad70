"""PCK@0.05 / @0.10 of a checkpoint on PSC6k (or the synthetic benchmark), per class, with the identity baseline.

    python -m pscfast.evaluate --data-root R --csv-dir C --checkpoint X [--arch resnet18] [--json out.json]
                               [--classes ...] [--gt]

`--checkpoint` takes pscfast checkpoints and the authors' released ones (pscfast.models.load_checkpoint), or
`identity` (the identity flow); `--gt` scores the synthetic benchmark's ground-truth deformation instead (a
sanity check: ~100%). `--classes` (ids or names, comma- or space-separated) evaluates those categories only
(held-out classes). The JSON (written only when the evaluation completes) holds pck05, pck10 in [0, 1], the
identity flow's, both directions, the consistency with the annotations and the per-class table. The paper's
consistency between two systems: run one with `--save-predictions a.pt`, the other with `--compare a.pt`
(same pairs). `--image-size` is the resolution the model sees (default: the checkpoint's training resolution,
else 256). What an encoder's features reach without the estimator, and baselines that do not match the pair:
`python -m pscfast.diagnose`.

Output paths, the device and the `--compare` file are checked before the evaluation runs; errors are one line
(exit 2 for bad input, 1 for a failed write).
"""
import argparse
import sys

import torch

from pscfast import _eval_cli
from pscfast._cli import one_line_errors
from pscfast.evaluation import GroundTruthFlows, consistency, identity_predictor, model_predictor
from pscfast.models._load import load_file

PROG = "pscfast.evaluate"
PREDICTION_KEYS = ("photo_to_sketch", "sketch_to_photo")


def load_predictions(path: str) -> dict:
    """A --save-predictions file: {"photo_to_sketch", "sketch_to_photo": (M, K, 2) tensors}."""
    preds = load_file(path, "--compare")
    if not (isinstance(preds, dict) and all(torch.is_tensor(preds.get(k)) for k in PREDICTION_KEYS)):
        what = f"keys {sorted(map(str, preds))[:6]}" if isinstance(preds, dict) else f"a {type(preds).__name__}"
        raise ValueError(f"--compare: {path} is not a predictions file written by --save-predictions (it holds "
                         f"{what}, not {list(PREDICTION_KEYS)})")
    return preds


def compare(mine: dict, theirs: dict, path: str) -> float:
    """The paper's consistency between two runs' predictions of the same pairs."""
    mine, theirs = (torch.cat([p[k] for k in PREDICTION_KEYS]) for p in (mine, theirs))
    if mine.shape != theirs.shape:
        raise ValueError(f"--compare: {path} holds predictions of shape {tuple(theirs.shape)}, these are "
                         f"{tuple(mine.shape)}: compare runs on the same pairs")
    return consistency(mine, theirs)


def predictor(a: argparse.Namespace):
    """(predict_fn, its name) of --gt or --checkpoint."""
    if a.gt:
        return GroundTruthFlows(a.csv_dir or a.data_root), "ground truth"
    if a.checkpoint == "identity":
        return identity_predictor, "identity"
    model, size = _eval_cli.load_model(a)
    return model_predictor(model, size), a.checkpoint


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python -m {PROG}", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="pscfast or release checkpoint (.pt / .pth.tar), or 'identity'")
    src.add_argument("--gt", action="store_true", help="score the synthetic ground-truth deformation")
    _eval_cli.add_arguments(ap)
    ap.add_argument("--compare", default=None,
                    help="predictions saved by another run: report the paper's consistency with them")
    return ap


def main(argv=None) -> int:
    ap = parser()
    a = ap.parse_args(argv)
    _eval_cli.check_arguments(ap, a)
    with one_line_errors(PROG):
        _eval_cli.prepare(a)
        other = load_predictions(a.compare) if a.compare else None
        data = _eval_cli.test_pairs(a)
        result = _eval_cli.score(data, *predictor(a), a)
        if other is not None:
            result["consistency_with"] = {"file": a.compare, "value": compare(result["predictions"], other, a.compare)}
        _eval_cli.report(result)
        if other is not None:
            print(f"consistency with {a.compare}: {result['consistency_with']['value']:.4f}")
        _eval_cli.write(a, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
