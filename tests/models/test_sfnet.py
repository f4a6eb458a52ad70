"""SFNet: shapes, correlation layout, the loss terms against closed forms, frozen backbone, training."""
import pytest
import torch

from pscfast.losses.sfnet import flow_loss, mask_loss, sfnet_loss, smoothness_loss
from pscfast.models.sfnet import SFNet
from pscfast.ops._reference import identity_grid, kernel_soft_argmax
from pscfast.training.sfnet import SFNetConfig, SFNetTrainer, load_sfnet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions: one thread avoids oversubscription when CI shares its cores (10x faster here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n=2, size=64):
    return torch.randn(n, 3, size, size), torch.randn(n, 3, size, size)


def _shift(n, h, w, dx, dy):
    return identity_grid(n, h, w) + torch.tensor([dx, dy])


def _scale(n, h, w, s):
    return identity_grid(n, h, w) * s


def test_flow_shapes_and_range():
    model = SFNet("resnet18").eval()
    photo, sketch = _images(2, 96)
    fwd, bwd = model.predict_flow(photo, sketch)
    assert fwd.shape == bwd.shape == (2, 6, 6, 2)  # layer3 at stride 16
    assert fwd.abs().max() <= 1 and bwd.abs().max() <= 1
    full = model.predict_flow(photo, sketch, full_res=True)[0]
    assert full.shape == (2, 96, 96, 2)
    with pytest.raises(ValueError, match="same shape"):
        model.predict_flow(photo, sketch[:, :, :64])


def test_correlation_layout_and_directions():
    model = SFNet("resnet18").eval()
    f_s = [torch.nn.functional.normalize(torch.rand(2, c, 5, 5), dim=1) for c in (7, 3)]
    f_t = [torch.nn.functional.normalize(torch.rand(2, c, 5, 5), dim=1) for c in (7, 3)]
    corr = model.correlation(f_s, f_t)
    expected = torch.ones(2, 25, 5, 5)
    for s, t in zip(f_s, f_t):
        for q in range(25):  # target position q = (q // 5, q % 5)
            expected[:, q] *= (s * t[:, :, q // 5, q % 5, None, None]).sum(1)
    torch.testing.assert_close(corr, expected)
    fwd, bwd, corr_fwd = model.flows(f_t, f_s)  # photo = t, sketch = s: fwd lives on s, points into t
    torch.testing.assert_close(corr_fwd, expected)
    torch.testing.assert_close(fwd, kernel_soft_argmax(expected, 50, 5, normalize="sfnet"))
    torch.testing.assert_close(bwd, kernel_soft_argmax(model.correlation(f_t, f_s), 50, 5, normalize="sfnet"))


def test_losses_vanish_for_identity():
    n, h, w = 2, 8, 8
    ident = identity_grid(n, h, w)
    mask = (torch.rand(n, 1, h, w) > 0.5).float()
    out = sfnet_loss(ident, ident, mask, mask)
    for k in ("loss", "mask", "flow", "smooth"):
        assert float(out[k]) == pytest.approx(0.0, abs=1e-10), k


def test_mask_loss_shift():
    n, h, w = 1, 9, 9
    m_t = torch.zeros(n, 1, h, w)
    m_t[..., 3:6, 4:7] = 1
    m_s = torch.roll(m_t, shifts=-1, dims=-1)  # the object one cell further left in s
    step = 2 / (w - 1)
    # phi_s(p) = p + 1 cell reads M^t one cell to the right: reconstructs M^s exactly; phi_t the inverse
    zero = mask_loss(_shift(n, h, w, step, 0), _shift(n, h, w, -step, 0), m_s, m_t)
    assert float(zero) == pytest.approx(0.0, abs=1e-6)
    # identity flows: each estimate is the other mask, differing on 3 + 3 of the 81 cells per direction
    assert float(mask_loss(identity_grid(n, h, w), identity_grid(n, h, w), m_s, m_t)) == pytest.approx(2 * 6 / 81)


def test_flow_loss_closed_forms():
    n, h, w = 1, 9, 9
    centre = torch.zeros(n, 1, h, w)
    centre[..., 3:6, 3:6] = 1  # |p| <= 0.25 in normalised units: both compositions stay inside the image
    assert float(flow_loss(_scale(n, h, w, 0.5), _scale(n, h, w, 2.0), centre, centre)) == pytest.approx(0, abs=1e-10)
    dx, dy = 0.1, -0.05  # both flows shift the same way: F + W(F) = 2 d on the foreground
    got = flow_loss(_shift(n, h, w, dx, dy), _shift(n, h, w, dx, dy), centre, centre)
    assert float(got) == pytest.approx(2 * 4 * (dx ** 2 + dy ** 2), rel=1e-5)


def test_smoothness_closed_form():
    n, h, w, s = 2, 6, 8, 0.7
    full = torch.ones(n, 1, h, w)
    phi = _scale(n, h, w, s)  # F = (s - 1) p: |dF_x/dcol| = |s - 1| 2 / (w - 1), likewise in y
    per_direction = abs(s - 1) * 2 * (h + w) / (h * w)
    assert float(smoothness_loss(phi, phi, full, full)) == pytest.approx(2 * per_direction, rel=1e-5)
    assert float(smoothness_loss(_shift(n, h, w, 0.3, 0.1), _shift(n, h, w, 0.3, 0.1), full, full)) < 1e-6


def _batch(n=2, size=64):
    """Photos with a bright square on noise; the sketch shows the square shifted, masks follow it."""
    g = torch.Generator().manual_seed(1)
    photo = 0.3 * torch.rand(n, 3, size, size, generator=g)
    sketch = 0.3 * torch.rand(n, 3, size, size, generator=g)
    m_p, m_s = torch.zeros(n, 1, size, size), torch.zeros(n, 1, size, size)
    m_p[..., 16:40, 12:36] = 1
    m_s[..., 24:48, 24:48] = 1
    return photo + m_p, sketch + m_s, m_p, m_s


def test_gradients_reach_adaptation_layers_only():
    model = SFNet("resnet18").train()
    photo, sketch, m_p, m_s = _batch()
    stats = model.encoder.bn1.norms[0].running_mean.clone()
    fwd, bwd = model(photo, sketch)
    sfnet_loss(fwd, bwd, m_s, m_p)["loss"].backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert torch.equal(model.encoder.bn1.norms[0].running_mean, stats)  # frozen BN stays in eval mode
    for name, p in model.named_parameters():
        if name.startswith(("adapt3.", "adapt4.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = SFNet("resnet18")
    photo, sketch, m_p, m_s = _batch()
    batch = {"photo": photo, "sketch": sketch, "photo_mask": m_p, "sketch_mask": m_s}
    cfg = SFNetConfig(image_size=64, batch_size=2, lr=1e-3, progress=False)
    trainer = SFNetTrainer(cfg, model, [{k: v[i] for k, v in batch.items()} for i in range(2)], torch.device("cpu"))
    losses = [trainer.train_step(batch)["loss"] for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0], losses


def test_checkpoint_round_trip_and_cli(tmp_path):
    from pscfast.models import save_checkpoint
    from pscfast.train import parse_sfnet as parse, split_model_flag
    model = SFNet("resnet18", sigma=3.0).eval()
    for p in model.adapt3.parameters():
        torch.nn.init.normal_(p, std=0.05)
    save_checkpoint(tmp_path / "s.pt", model, model_kind="sfnet", beta=model.beta, sigma=model.sigma)
    loaded = load_sfnet(str(tmp_path / "s.pt"))
    photo, sketch = _images(1, 64)
    for a, b in zip(model.predict_flow(photo, sketch), loaded.predict_flow(photo, sketch)):
        torch.testing.assert_close(a, b)
    assert loaded.sigma == 3.0
    save_checkpoint(tmp_path / "p.pt", model)
    with pytest.raises(ValueError, match="not an SFNet checkpoint"):
        load_sfnet(str(tmp_path / "p.pt"))
    model_name, rest = split_model_flag(["--epochs", "2", "--model", "sfnet", "--no-progress"])
    assert model_name == "sfnet" and rest == ["--epochs", "2", "--no-progress"]
    cfg = parse(rest)
    assert cfg.epochs == 2 and cfg.progress is False and cfg.lr == parse([]).lr
    assert split_model_flag(["--arch", "resnet50"]) == ("psc", ["--arch", "resnet50"])
