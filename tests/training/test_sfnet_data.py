"""SFNet's masked training pairs, and a whole `train/run.py --model sfnet` run, on a tiny synthetic benchmark."""
import os

import pytest
import torch

from pscfast.data import DatasetError
from pscfast.data.synthetic import generate
from pscfast.train import main as train_main
from pscfast.training.sfnet import SFNetConfig, build, load_sfnet
from pscfast.training.sfnet.data import MaskedPairs, load_mask, mask_path


def test_mask_path():
    assert mask_path("r/256x256/photo/tx_1/cat/cat_0001.jpg", "photo") == "r/256x256/mask/tx_1/cat/cat_0001.png"
    assert (mask_path("r/256x256/sketch/tx_1/cat/cat_0001-2.png", "sketch")
            == "r/256x256/sketch_mask/tx_1/cat/cat_0001-2.png")
    with pytest.raises(DatasetError, match="no 'sketch' folder"):
        mask_path("r/photo/cat/x.png", "sketch")


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("sfnet") / "synthetic")
    generate(out, seed=3, classes=["fish"], photos_per_class=2, sketches_per_photo=2, test_photos_per_class=1)
    return out


def test_items_carry_their_masks_flipped_with_the_images(bench):
    data = MaskedPairs(bench, os.path.join(bench, "train_pairs_ps.csv"), generator=torch.Generator().manual_seed(0))
    flips = set()
    for _ in range(8):
        item = data[0]
        flips.add(item["flip"])
        for kind in ("photo", "sketch"):
            m = item[f"{kind}_mask"]
            assert m.shape == (1, 256, 256) and set(m.unique().tolist()) == {0.0, 1.0}
            raw = load_mask(os.path.join(bench, mask_path(item[f"{kind}_path"], kind)))
            torch.testing.assert_close(m, raw.flip(-1) if item["flip"] else raw)
        # the photo's object (the mask) is not the clutter: its mean colour differs from the background's
        p, m = item["photo"], item["photo_mask"]
        assert ((p * m).sum((1, 2)) / m.sum() - (p * (1 - m)).sum((1, 2)) / (1 - m).sum()).abs().max() > 0.02
    assert flips == {0, 1}


def test_missing_mask_is_a_clear_error(bench):
    data = MaskedPairs(bench, os.path.join(bench, "train_pairs_ps.csv"))
    os.remove(os.path.join(bench, mask_path(data.pairs.photos[0], "photo")))
    with pytest.raises(DatasetError, match="mask not found"):
        data[0]


def test_a_run_trains_the_adaptation_layers_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    bench = str(tmp_path / "synthetic")  # its own: test_missing_mask_is_a_clear_error removes a mask of the other
    generate(bench, seed=3, classes=["fish"], photos_per_class=2, sketches_per_photo=2, test_photos_per_class=1)
    out = tmp_path / "run"
    train_main(["--model", "sfnet", "--data-root", bench, "--out", str(out), "--epochs", "2", "--batch-size", "1",
                "--image-size", "64", "--eval-limit", "2", "--device", "cpu", "--no-progress"])
    printed = capsys.readouterr().out
    assert printed.startswith("SFNet PCK@0.05 ") and f"checkpoint: {out / 'final.pt'}" in printed
    trained = load_sfnet(str(out / "final.pt")).state_dict()
    torch.manual_seed(0)  # the run's seed: the same initial weights
    initial = build(SFNetConfig(), "cpu").state_dict()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert changed and all(k.startswith(("adapt3.", "adapt4.")) for k in changed), sorted(changed)[:5]
    assert (out / "correspondence.png").is_file()
