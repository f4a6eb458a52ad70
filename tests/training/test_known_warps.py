"""Stage 2's known-warp supervision of the STN (the default run's objective) and the default run's evaluation."""
import pytest
import torch

from pscfast.models import SKETCH, PSCNet
from pscfast.ops._reference import identity_grid, resize_grid
from pscfast.training.augment import AugmentConfig, apply_geometry
from pscfast.losses import known_warp_loss
from pscfast.training.estimator_stage import EstimatorStage, known_warps
from pscfast.training.pipeline import build_model
from tests.training.fake_pairs import FakePairs, tiny_config

CPU = torch.device("cpu")


def test_known_warps_encode_the_image_and_the_image_under_the_returned_grid():
    torch.manual_seed(0)
    enc = PSCNet("resnet18").encoder.eval()
    images = torch.randn(3, 3, 64, 64)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    src, tgt, grid = known_warps(enc, images, SKETCH, AugmentConfig(), g1)
    _, _, again = known_warps(enc, images, SKETCH, AugmentConfig(), g2)
    assert grid.shape == (3, 64, 64, 2) and torch.equal(grid, again)
    assert not torch.allclose(grid, identity_grid(3, 64, 64), atol=0.05)  # a real warp
    torch.testing.assert_close(src[1], enc.features(images, SKETCH)[1])
    torch.testing.assert_close(tgt[1], enc.features(apply_geometry(images, grid), SKETCH)[1])
    assert not src[0].requires_grad and not tgt[0].requires_grad


def test_known_warp_loss_is_the_masked_mean_absolute_error():
    grid = identity_grid(2, 32, 32) * 1.25  # the outer cells of the 16x16 grid point outside the image
    target = resize_grid(grid, (16, 16))
    inside = (target.abs() <= 1).all(-1)
    assert 0 < inside.sum() < inside.numel()
    assert known_warp_loss(target, grid) == 0
    pred = target.clone()
    pred[~inside] += 5.0  # errors where no match exists do not count
    assert known_warp_loss(pred, grid) == 0
    pred[inside] += torch.tensor([0.1, -0.3])
    torch.testing.assert_close(known_warp_loss(pred, grid), torch.tensor(0.2))


def test_the_stn_learns_a_known_warp_and_the_encoder_stays_frozen():
    """Stage 2 with warp_weight only: the supervision reaches the STN (its loss falls over 30 steps on four
    fixed pairs) and nothing else changes."""
    cfg = tiny_config(image_size=64, batch_size=4, epochs_estimator=30, sim_weight=0.0, con_weight=0.0,
                      warp_weight=1.0, lr_estimator=0.01, augment=False)
    torch.manual_seed(0)
    model = build_model(cfg, CPU)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    history = EstimatorStage(cfg, model, FakePairs(n=4, size=64), CPU, 0, 1).run()
    assert set(history[0]) == {"loss", "warp"}
    first, last = (sum(h["warp"] for h in part) / 5 for part in (history[:5], history[-5:]))
    assert last < 0.9 * first, (first, last)  # measured: 0.17 -> 0.12
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder_before.items())


def test_known_warps_add_to_the_papers_losses():
    cfg = tiny_config(image_size=64, batch_size=2, epochs_estimator=1, warp_weight=0.5, augment=False)
    torch.manual_seed(0)
    history = EstimatorStage(cfg, build_model(cfg, CPU), FakePairs(n=2, size=64), CPU, 0, 1).run()
    h = history[0]
    assert set(h) == {"loss", "similarity", "consistency", "warp"}
    assert h["loss"] == pytest.approx(0.1 * h["similarity"] + h["consistency"] + 0.5 * h["warp"], rel=1e-5)


def test_the_default_run_reports_the_mismatched_photo_baseline(tmp_path):
    from pscfast.data import synthetic
    from pscfast.training.benchmark import evaluate_pck
    root = str(tmp_path / "bench")
    synthetic.generate(root, seed=1, classes=("snowman", "fish"), photos_per_class=3, sketches_per_photo=1,
                       test_photos_per_class=2, masks=False)
    cfg = tiny_config(image_size=64, out=str(tmp_path / "out"))
    (tmp_path / "out").mkdir()
    torch.manual_seed(0)
    result = evaluate_pck(cfg, PSCNet("resnet18"), root, root, CPU)
    assert set(result["mismatch"]) == {"pck05", "pck10"} and all(0 <= v <= 1 for v in result["mismatch"].values())
    assert (tmp_path / "out" / "correspondence.png").is_file()
