"""PCK@0.05 / @0.10 of a checkpoint on PSC6k (or the synthetic benchmark), per class, with the identity baseline.

    python -m pscfast.evaluate --data-root R --csv-dir C --checkpoint X [--arch resnet18] [--json out.json]
                               [--classes ...] [--gt]

`--checkpoint` takes pscfast checkpoints and the authors' released ones (pscfast.models.load_checkpoint);
`--gt` scores the synthetic benchmark's ground-truth deformation instead (a sanity check: ~100%).
`--classes` (ids or names, comma- or space-separated) evaluates those categories only (held-out classes).
The JSON (written only when the evaluation completes) holds pck05, pck10 in [0, 1], the identity flow's,
both directions, the consistency with the annotations and the per-class table. The paper's consistency
between two systems: run one with `--save-predictions a.pt`, the other with `--compare a.pt` (same pairs).

`--probe` scores, instead of the checkpoint's STN, flows optimised per test pair against the stage-2 loss through
the checkpoint's frozen encoder (pscfast.evaluation.probe): whether these features can lead a warp estimator
past the identity at all. `--match` scores nearest-neighbour matching of the encoder's features instead
(pscfast.evaluation.matching), in seconds. `--checkpoint random` takes a randomly initialised encoder (`--arch`,
seed 0), `--checkpoint pretrained` the ImageNet-pretrained EfficientNet-Lite0 as it installs (or `--arch`);
`--control` (synthetic only) replaces each sketch by its photo under the true deformation, where both must beat
the identity. `--mismatch` scores any of these with each sketch paired with another pair's photo
(pscfast.evaluation.mismatch): what a predictor keeps there does not come from matching the pair.
`--image-size` is the resolution the model sees (default: the checkpoint's training resolution, else 256).
"""
import argparse
import json
import os
import sys
import time

import torch

from pscfast.data import DatasetError, PSCTestPairs
from pscfast.evaluation import GroundTruthFlows, Mismatched, consistency, evaluate, format_table
from pscfast.models import ARCHS


def _write_json(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _load_model(a):
    """The checkpoint's PSCNet and the image size to run it at: --image-size, else the resolution the
    checkpoint was trained at, else 256 (release checkpoints record none: the paper's)."""
    from pscfast.models import load_checkpoint
    shared = None if a.shared_bn is None else a.shared_bn == "1"
    model, config = load_checkpoint(a.checkpoint, arch=a.arch, shared_bn=shared, with_config=True)
    return model.to(a.device), a.image_size or int(config.get("image_size", 256))


def _features_predictor(a):
    """--probe or --match: a predict_fn on the checkpoint's encoder (or a random one), and its name."""
    from pscfast.evaluation import FeatureMatch, FlowProbe
    from pscfast.models import build_encoder, load_imagenet
    if a.checkpoint in ("random", "pretrained"):
        torch.manual_seed(0)
        encoder = build_encoder(a.arch or ("resnet18" if a.checkpoint == "random" else "efficientnet_lite0"))
        if a.checkpoint == "pretrained":
            load_imagenet(encoder)
        encoder, size = encoder.to(a.device), a.image_size or 256
    else:
        model, size = _load_model(a)
        encoder = model.encoder
    control = GroundTruthFlows(a.csv_dir or a.data_root) if a.control else None
    if a.probe:
        probe = FlowProbe(encoder, a.probe_steps, a.probe_lr, size, control=control, progress=True)
        return probe, f"probe of {a.checkpoint}"
    return FeatureMatch(encoder, size, control), f"feature matching of {a.checkpoint}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m pscfast.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", required=True, help="Sketchy root (holds rendered_256x256/)")
    ap.add_argument("--csv-dir", default=None, help="folder with test_pairs_ps.csv (default: --data-root)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="pscfast or release checkpoint (.pt / .pth.tar), 'identity', or (with "
                     "--probe / --match) 'random' or 'pretrained'")
    src.add_argument("--gt", action="store_true", help="score the synthetic ground-truth deformation")
    ap.add_argument("--arch", default=None, choices=ARCHS, help="the encoder (default: detected from the checkpoint)")
    ap.add_argument("--shared-bn", default=None, choices=["0", "1"], help="override the checkpoint's BN sharing")
    ap.add_argument("--classes", nargs="+", default=None, help="class ids or names (comma/space separated)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--save-predictions", default=None, help="save the predicted keypoints (.pt) for --compare")
    ap.add_argument("--compare", default=None,
                    help="predictions saved by another run: report the paper's consistency with them")
    feats = ap.add_argument_group("the encoder's features alone (pscfast.evaluation.probe, .matching)")
    how = feats.add_mutually_exclusive_group()
    how.add_argument("--probe", action="store_true", help="score flows optimised against the stage-2 loss")
    how.add_argument("--match", action="store_true", help="score nearest-neighbour matching of the features")
    feats.add_argument("--probe-steps", type=int, default=50, help="Adam steps per batch (default 50)")
    feats.add_argument("--probe-lr", type=float, default=0.005, help="Adam learning rate (default 0.005)")
    feats.add_argument("--control", action="store_true", help="positive control: sketch = photo under the true warp")
    ap.add_argument("--mismatch", action="store_true",
                    help="each sketch paired with another pair's photo: the baseline that matching must beat")
    ap.add_argument("--image-size", type=int, default=None,
                    help="the model's input resolution (default: the checkpoint's training resolution, else 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = ap.parse_args(argv)
    csv_path = os.path.join(a.csv_dir or a.data_root, "test_pairs_ps.csv")
    classes = [c for arg in a.classes for c in arg.split(",") if c] if a.classes else None
    features = a.probe or a.match
    if (a.control or a.checkpoint in ("random", "pretrained")) and not features:
        ap.error("--control and --checkpoint random / pretrained go with --probe or --match")
    if features and (a.gt or a.checkpoint == "identity"):
        ap.error(f"--{'probe' if a.probe else 'match'} needs an encoder: --checkpoint FILE or random")
    if a.mismatch and (a.gt or a.checkpoint == "identity"):
        ap.error("--mismatch needs a model that looks at the images: --checkpoint FILE, or random with --probe "
                 "or --match")
    if a.mismatch and a.control:
        ap.error("--mismatch and --control are exclusive")
    if a.image_size is not None and a.image_size < 32:
        ap.error(f"--image-size must be at least 32 (layer3 has stride 16), got {a.image_size}")
    try:
        data = PSCTestPairs(a.data_root, csv_path)
        if features:
            predict, what = _features_predictor(a)
        elif a.gt:
            predict, what = GroundTruthFlows(a.csv_dir or a.data_root), "ground truth"
        elif a.checkpoint == "identity":
            from pscfast.predict import build_predictor
            predict, what = build_predictor("identity"), "identity"
        else:
            from pscfast.training.pipeline import predictor
            model, size = _load_model(a)
            predict, what = predictor(model, size), a.checkpoint
        if a.control:
            what += " (control)"
        if a.mismatch:
            predict, what = Mismatched(predict), what + " (mismatched photos)"
        t0 = time.perf_counter()
        result = evaluate(predict, data, a.batch_size, a.device, classes=classes, num_workers=a.workers,
                          return_predictions=True)
        preds = result.pop("predictions")
        if a.compare:
            other = torch.load(a.compare)
            result["consistency_with"] = {"file": a.compare, "value": consistency(
                torch.cat([preds["photo_to_sketch"], preds["sketch_to_photo"]]),
                torch.cat([other["photo_to_sketch"], other["sketch_to_photo"]]))}
    except (DatasetError, FileNotFoundError, ValueError, KeyError, FloatingPointError, ImportError) as e:
        print(f"pscfast.evaluate: {e}", file=sys.stderr)
        return 2
    result.update({"model": what, "data_root": a.data_root, "csv": csv_path, "classes": classes,
                   "seconds": round(time.perf_counter() - t0, 2)})
    print(format_table(result))
    print(f"PCK@0.05 {100 * result['pck05']:.2f}  PCK@0.10 {100 * result['pck10']:.2f}  "
          f"(identity {100 * result['identity']['pck05']:.2f} / {100 * result['identity']['pck10']:.2f}, "
          f"consistency {result['consistency']:.4f}, {result['pairs']} pairs, {what})")
    if "consistency_with" in result:
        print(f"consistency with {a.compare}: {result['consistency_with']['value']:.4f}")
    if a.save_predictions:
        torch.save(preds, a.save_predictions)
    if a.json:
        _write_json(a.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
