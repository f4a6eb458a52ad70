"""SFNet: the model and its loss against the authors' release (tests/models/sfnet_reference.py) in float64,
shapes on square and rectangular images, correlation layout, the loss terms against closed forms, frozen
backbone, training."""
import math

import pytest
import torch

from pscfast.losses.sfnet import flow_loss, mask_loss, sfnet_loss, smoothness_loss, to_grid
from pscfast.models.resnet import PHOTO, SKETCH
from pscfast.models.sfnet import SFNet
from pscfast.ops._reference import identity_grid, kernel_soft_argmax
from pscfast.training.sfnet import SFNetConfig, SFNetTrainer, load_sfnet
from tests.models import sfnet_reference as ref
from tests.utils import assert_close, require


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


@pytest.mark.parametrize("size", [(96, 96), (96, 160), (80, 112)])
def test_flow_shapes_and_range(size):
    """Square and rectangular images, also with odd layer3 grids (80 x 112: 5 x 7, layer4 3 x 4)."""
    model = SFNet("resnet18").eval()
    photo, sketch = torch.randn(2, 3, *size), torch.randn(2, 3, *size)
    grid = tuple(math.ceil(s / 16) for s in size)  # layer3's stride, rounded up
    fwd, bwd = model.predict_flow(photo, sketch)
    assert fwd.shape == bwd.shape == (2, *grid, 2)
    assert fwd.abs().max() <= 1 and bwd.abs().max() <= 1
    full_fwd, full_bwd = model.predict_flow(photo, sketch, full_res=True)
    assert full_fwd.shape == full_bwd.shape == (2, *size, 2)
    corners = full_fwd[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # align_corners=True: the flow's corner cells
    torch.testing.assert_close(corners, fwd[:, [0, 0, -1, -1], [0, -1, 0, -1]])
    with pytest.raises(ValueError, match="same shape"):
        model.predict_flow(photo, sketch[:, :, :64])


def _reference_model(backend):
    """A float64 SFNet in eval mode whose adaptation layers have non-trivial BN statistics and affine terms."""
    torch.manual_seed(0)
    model = SFNet("resnet18", backend=backend).double().eval()
    for layer in (model.adapt3, model.adapt4):
        for _, bn, _ in layer.blocks:
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
            torch.nn.init.uniform_(bn.bias, -0.2, 0.2)
    return model


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("size", [(128, 128), (96, 160)])
def test_forward_matches_sfnet_release(backend, size):
    """The whole forward (adaptation layers, conv5 doubled, the matching layer per level, product, normalised
    again, kernel soft argmax both ways) against the release's computation, square and not. The features are
    non-negative here, so the matching layer's ReLU and epsilon show in the next test."""
    require("correlation", backend, "cpu", torch.float64)
    model = _reference_model(backend)
    g = torch.Generator().manual_seed(1)
    photo = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    sketch = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    fwd, bwd = model(photo, sketch)
    with torch.no_grad():
        s2t, t2s = ref.forward(model, sketch, photo, SKETCH, PHOTO)  # source = sketch, target = photo
    assert fwd.shape == (2, size[0] // 16, size[1] // 16, 2)
    assert_close(fwd, s2t)
    assert_close(bwd, t2s)


def test_correlation_matches_sfnet_matching_layer():
    """Features of small norm (1e-4 per channel): the release's epsilon (1e-6 under the root) shapes the
    cosines there, and negative cosines are clipped before the levels multiply; 5 x 7 source, 3 x 4 target."""
    model = SFNet("resnet18")
    g = torch.Generator().manual_seed(2)
    f_src = [1e-4 * torch.randn(2, c, 5, 7, generator=g, dtype=torch.float64) for c in (6, 3)]
    f_tgt = [1e-4 * torch.randn(2, c, 3, 4, generator=g, dtype=torch.float64) for c in (6, 3)]
    expected = ref.matching(f_src[0], f_tgt[0]) * ref.matching(f_src[1], f_tgt[1])
    assert (expected == 0).any() and expected.max() > 0
    assert_close(model.correlation(f_src, f_tgt), expected)


def test_correlation_layout_and_directions():
    model = SFNet("resnet18").eval()
    g = torch.Generator().manual_seed(3)
    f_s = [torch.rand(2, c, 4, 5, generator=g) for c in (7, 3)]  # positive features: no cosine is clipped
    f_t = [torch.rand(2, c, 4, 5, generator=g) for c in (7, 3)]
    corr = model.correlation(f_s, f_t)
    expected = torch.ones(2, 20, 4, 5)
    for s, t in zip(f_s, f_t):
        s, t = torch.nn.functional.normalize(s, dim=1), torch.nn.functional.normalize(t, dim=1)
        for q in range(20):  # target position q = (q // 5, q % 5)
            expected[:, q] *= (s * t[:, :, q // 5, q % 5, None, None]).sum(1)
    torch.testing.assert_close(corr, expected)
    fwd, bwd, corr_fwd = model.flows(f_t, f_s)  # photo = t, sketch = s: fwd lives on s, points into t
    torch.testing.assert_close(corr_fwd, expected)
    torch.testing.assert_close(fwd, kernel_soft_argmax(expected, 50, 5, (4, 5), normalize="sfnet"))
    torch.testing.assert_close(bwd, kernel_soft_argmax(model.correlation(f_t, f_s), 50, 5, (4, 5), normalize="sfnet"))


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
    dx, dy = 0.1, -0.05  # both flows shift the same way: F + W(F) = 2 d on the 9 foreground cells, / (9 + 1)
    got = flow_loss(_shift(n, h, w, dx, dy), _shift(n, h, w, dx, dy), centre, centre)
    assert float(got) == pytest.approx(2 * 9 * 4 * (dx ** 2 + dy ** 2) / 10, rel=1e-5)


def test_smoothness_closed_form():
    """A constant shift d on a full mask: the central differences vanish inside; the zero padding leaves
    |d_x + d_y| / 2 on the first and last column and row (the release adds the components' differences)."""
    n, h, w = 2, 6, 8
    full = torch.ones(n, 1, h, w)
    dx, dy = 0.3, 0.1
    per_direction = 2 * (h + w) * abs(dx + dy) / 2 / (h * w + 1)
    got = smoothness_loss(_shift(n, h, w, dx, dy), _shift(n, h, w, dx, dy), full, full)
    assert float(got) == pytest.approx(2 * per_direction, rel=1e-5)
    assert float(smoothness_loss(_shift(n, h, w, 0.3, -0.3), _shift(n, h, w, 0.3, -0.3), full, full)) < 1e-7


def test_loss_matches_sfnet_release():
    """Every term against the release's model outputs and custom_loss, float64, on a rectangular grid, flows
    reaching outside the image, and images with different foreground sizes (one without foreground)."""
    n, h, w = 3, 6, 10
    g = torch.Generator().manual_seed(4)
    flows = [0.9 * identity_grid(n, h, w, dtype=torch.float64)
             + 0.2 * torch.randn(n, h, w, 2, generator=g, dtype=torch.float64) for _ in range(2)]
    m_s, m_t = torch.zeros(n, 1, h, w, dtype=torch.float64), torch.zeros(n, 1, h, w, dtype=torch.float64)
    m_s[0, :, 1:5, 2:9], m_s[1, :, 2:4, 3:5] = 1, 1
    m_t[0, :, 0:4, 1:6], m_t[1, :, 1:6, 4:10], m_t[2, :, 3:5, 0:3] = 1, 1, 1
    got = sfnet_loss(*flows, m_s, m_t)
    expected = ref.loss(*flows, m_s, m_t)
    for key, value in expected.items():
        assert value > 0, key
        assert_close(got[key], value, msg=key)


@pytest.mark.parametrize("size, grid", [((256, 256), (16, 16)), ((96, 160), (6, 10)), ((100, 150), (7, 9)),
                                        ((6, 10), (6, 10))])
def test_masks_reach_the_grid_as_in_the_release(size, grid):
    """Soft masks (the release's are, after its affine warps): PIL's bilinear resize, then above 0.1."""
    g = torch.Generator().manual_seed(5)
    blobs = torch.rand(3, 1, 4, 5, generator=g) ** 3
    masks = torch.nn.functional.interpolate(blobs, size=size, mode="bilinear", align_corners=False)
    expected = ref.mask_to_grid(masks, grid)
    assert 0 < expected.mean() < 1
    torch.testing.assert_close(to_grid(masks, grid), expected, rtol=0, atol=0)


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


def test_trainer_keeps_the_last_partial_batch():
    """Three pairs in batches of two: two steps an epoch, the second on one pair (the release's loader)."""
    photo, sketch, m_p, m_s = _batch(3)
    items = [{"photo": photo[i], "sketch": sketch[i], "photo_mask": m_p[i], "sketch_mask": m_s[i]} for i in range(3)]
    cfg = SFNetConfig(image_size=64, batch_size=2, epochs=1, progress=False)
    trainer = SFNetTrainer(cfg, SFNet("resnet18"), items, torch.device("cpu"))
    sizes = []
    trainer.losses = lambda batch, losses=trainer.losses: sizes.append(len(batch["photo"])) or losses(batch)
    assert trainer.steps_per_epoch == 2 and len(trainer.run()) == 2 and sorted(sizes) == [1, 2]


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
