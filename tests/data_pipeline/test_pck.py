"""PCK as the release computes it (golden values), directions, the evaluation loop on the synthetic benchmark."""
import os

import pytest
import torch

from pscfast.data import PSCTestPairs
from pscfast.evaluation import GroundTruthFlows, consistency, evaluate, pair_scores, pck, transfer_keypoints
from pscfast.ops._reference import identity_grid

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "data", "golden-psc-ops.pt")


def test_golden_pck_exact():
    g = torch.load(GOLDEN)
    pred = transfer_keypoints(g["pck_flow16"], g["pck_kp_src_rowcol"])
    assert torch.equal(pred, g["pck_pred_rowcol"])
    assert torch.equal(pck(pred, g["pck_kp_dst_rowcol"], 0.10), g["pck10"])
    assert torch.equal(pck(pred, g["pck_kp_dst_rowcol"], 0.05), g["pck05"])


def test_translation_flow_moves_rounded_keypoints():
    # grid sampling 20 px to the right and 10 px down: g(x) = x + shift in pixels, converted to [-1, 1]
    shift = torch.tensor([20.0, 10.0]) * 2 / 255
    flow = identity_grid(1, 16, 16) + shift
    kp = torch.tensor([[[3.4, 100.6], [250.2, 0.0]]])  # (row, col)
    pred = transfer_keypoints(flow, kp)
    expect = torch.tensor([[[3 + 10, 101 + 20], [250 + 10, 0 + 20]]], dtype=torch.float32)
    assert torch.allclose(pred, expect, atol=1e-3)


def test_directions_use_bwd_for_photo_keypoints():
    torch.manual_seed(1)
    kp_photo = torch.rand(2, 8, 2) * 200 + 20
    shift_px = torch.tensor([30.0, -15.0])
    kp_sketch = kp_photo.round() + shift_px  # sketch = photo moved by shift
    ident = identity_grid(2, 16, 16)
    bwd = ident + shift_px * 2 / 255  # on the photo grid, pointing into the sketch
    fwd = ident - shift_px * 2 / 255
    s = pair_scores(fwd, bwd, kp_photo, kp_sketch)
    assert torch.allclose(s["pred_sketch"], kp_sketch, atol=1e-3)
    assert s["pck05"][:, 0].eq(1).all() and s["pck05"][:, 1].eq(1).all()
    swapped = pair_scores(bwd, fwd, kp_photo, kp_sketch)  # wrong convention: 67 px off, nothing correct
    assert swapped["pck10"].eq(0).all()


def test_pck_threshold_is_alpha_times_256():
    gt = torch.zeros(1, 4, 2)
    pred = torch.tensor([[[12.7, 0.0], [12.9, 0.0], [0.0, 25.5], [18.0, 18.3]]])  # last: 25.67 px away
    assert pck(pred, gt, 0.05).tolist() == [0.25]
    assert pck(pred, gt, 0.10).tolist() == [0.75]


def test_consistency():
    a = torch.zeros(3, 8, 2)
    b = a + torch.tensor([3.0, 4.0])
    assert consistency(a, b) == pytest.approx(5 / 256)
    with pytest.raises(ValueError):
        consistency(a, b[:, :7])


def test_evaluate_ground_truth_vs_identity(tiny_root):
    ds = PSCTestPairs(tiny_root, os.path.join(tiny_root, "test_pairs_ps.csv"))
    gt = evaluate(GroundTruthFlows(tiny_root), ds, batch_size=4, progress=False)
    ident = evaluate(lambda p, s: (identity_grid(p.shape[0], 16, 16), identity_grid(p.shape[0], 16, 16)), ds,
                     batch_size=4, progress=False)
    print(f"GT pck05 {gt['pck05']:.4f} pck10 {gt['pck10']:.4f}; identity {ident['pck05']:.4f} {ident['pck10']:.4f}")
    assert gt["pck05"] >= 0.95 and gt["pck10"] >= 0.99
    assert gt["consistency"] < 0.01
    assert ident["pck05"] < 0.6 and ident["pck10"] < gt["pck10"] - 0.2
    assert ident["pck05"] == pytest.approx(gt["identity"]["pck05"])
    assert set(gt["per_class"]) == {"snowman", "fish", "car"}
    assert all(r["pairs"] == 2 for r in gt["per_class"].values())
    fish = evaluate(GroundTruthFlows(tiny_root), ds, classes=["fish"], progress=False)
    assert fish["pairs"] == 2 and list(fish["per_class"]) == ["fish"]
    assert fish["identity"]["pck05"] == pytest.approx(gt["per_class"]["fish"]["identity_pck05"])


def test_evaluate_rejects_bad_flow_shapes(tiny_root):
    ds = PSCTestPairs(tiny_root, os.path.join(tiny_root, "test_pairs_ps.csv"))
    with pytest.raises(ValueError, match=r"fwd must be \(N=2, h, h, 2\)"):
        evaluate(lambda p, s: (torch.zeros(2, 16, 16, 3), torch.zeros(2, 16, 16, 2)), ds, batch_size=2, progress=False)
