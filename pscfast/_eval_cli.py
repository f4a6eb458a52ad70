"""What `python -m pscfast.evaluate` and `python -m pscfast.diagnose` share: the benchmark and run arguments, the
checkpoint's model at its resolution, scoring a predictor, the report on stdout and in a JSON file."""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from pscfast._device import choose_device
from pscfast.data import PSCTestPairs
from pscfast.evaluation import evaluate, format_table
from pscfast.models import ARCHS, load_checkpoint
from pscfast.models._load import atomic_write, check_writable


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The benchmark, the model and its input size, the outputs, the run."""
    ap.add_argument("--data-root", required=True, help="Sketchy root (holds rendered_256x256/)")
    ap.add_argument("--csv-dir", default=None, help="folder with test_pairs_ps.csv (default: --data-root)")
    ap.add_argument("--classes", nargs="+", default=None, help="class ids or names (comma/space separated)")
    ap.add_argument("--arch", default=None, choices=ARCHS, help="the encoder (default: detected from the checkpoint)")
    ap.add_argument("--shared-bn", default=None, choices=["0", "1"], help="override the checkpoint's BN sharing")
    ap.add_argument("--image-size", type=int, default=None,
                    help="the model's input resolution (default: the checkpoint's training resolution, else 256)")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--save-predictions", default=None,
                    help="save the predicted keypoints (.pt): {photo_to_sketch, sketch_to_photo} (M, 8, 2) (x, y)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda, cuda:N")


def check_arguments(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.image_size is not None and a.image_size < 32:
        ap.error(f"--image-size must be at least 32 (layer3 has stride 16), got {a.image_size}")


def prepare(a: argparse.Namespace) -> None:
    """Checks made before any work: the device (``a.device`` becomes a torch.device) and the output files;
    raises ValueError or OSError."""
    a.device = choose_device(a.device, "--device")
    for flag, path in (("--json", a.json), ("--save-predictions", a.save_predictions)):
        if path:
            check_writable(path, flag)


def csv_path(a: argparse.Namespace) -> str:
    return os.path.join(a.csv_dir or a.data_root, "test_pairs_ps.csv")


def load_model(a: argparse.Namespace):
    """The checkpoint's PSCNet and the image size to run it at: --image-size, else the resolution the
    checkpoint was trained at, else 256 (release checkpoints record none: the paper's)."""
    shared = None if a.shared_bn is None else a.shared_bn == "1"
    model, config = load_checkpoint(a.checkpoint, arch=a.arch, shared_bn=shared, with_config=True)
    return model.to(a.device), a.image_size or int(config.get("image_size", 256))


def test_pairs(a: argparse.Namespace) -> PSCTestPairs:
    """The benchmark's test pairs (read before any model is built: a wrong path is reported at once)."""
    return PSCTestPairs(a.data_root, csv_path(a))


def score(data: PSCTestPairs, predict, what: str, a: argparse.Namespace) -> dict:
    """Evaluate ``predict`` (named ``what``) on ``data``; the predicted keypoints under "predictions"."""
    classes = [c for arg in a.classes for c in arg.split(",") if c] if a.classes else None
    t0 = time.perf_counter()
    result = evaluate(predict, data, a.batch_size, a.device, classes=classes, num_workers=a.workers,
                      return_predictions=True)
    result.update({"model": what, "data_root": a.data_root, "csv": csv_path(a), "classes": classes,
                   "seconds": round(time.perf_counter() - t0, 2)})
    return result


def report(result: dict) -> None:
    """The per-class table and the totals on stdout."""
    print(format_table(result))
    print(f"PCK@0.05 {100 * result['pck05']:.2f}  PCK@0.10 {100 * result['pck10']:.2f}  "
          f"(identity {100 * result['identity']['pck05']:.2f} / {100 * result['identity']['pck10']:.2f}, "
          f"consistency {result['consistency']:.4f}, {result['pairs']} pairs, {result['model']})")


def write(a: argparse.Namespace, result: dict) -> None:
    """--save-predictions and --json, each written completely or not at all."""
    preds = result.pop("predictions")
    if a.save_predictions:
        atomic_write(a.save_predictions, lambda f: torch.save(preds, f), "--save-predictions")
    if a.json:
        atomic_write(a.json, lambda f: f.write(json.dumps(result, indent=2).encode()), "--json")
