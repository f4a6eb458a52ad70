"""PSC model: shapes, STN parameter count, conditional BN, MoCo, ImageNet init."""
import pytest
import torch
from torch import nn

from pscfast.models import PHOTO, SKETCH, MoCo, PSCNet, ResNet, load_imagenet
from pscfast.models.resnet import ReplicateConv2d, replicate_pad
from pscfast.ops._reference import identity_grid


def test_stn_parameter_count_matches_spec():
    n = sum(p.numel() for p in PSCNet().stn.parameters())
    assert round(n / 1e6, 2) == 10.23


def test_feature_and_flow_shapes():
    m = PSCNet().eval()
    x = torch.rand(2, 3, 256, 256)
    l2, l3 = m.encoder.features(x, PHOTO)
    assert l2.shape == (2, 128, 32, 32) and l3.shape == (2, 256, 16, 16)
    assert (l2 >= 0).all() and (l3 >= 0).all()  # raw post-ReLU, not normalised
    fwd, bwd = m.predict_flow(x, torch.rand(2, 3, 256, 256))
    assert fwd.shape == bwd.shape == (2, 16, 16, 2)
    # N(0, 1e-3) init: every residual is tiny, so the flows start at the identity
    assert torch.allclose(fwd, identity_grid(2, 16, 16), atol=1e-2)
    full, _ = m.predict_flow(x, x, full_res=True)
    assert full.shape == (2, 256, 256, 2)
    assert torch.allclose(full[:, ::17, ::17], fwd, atol=1e-5)  # align_corners=True: corners coincide


def test_bottleneck_feature_channels():
    enc = ResNet("resnet50").eval()
    l2, l3 = enc.features(torch.rand(1, 3, 64, 64), SKETCH)
    assert l2.shape == (1, 512, 8, 8) and l3.shape == (1, 1024, 4, 4)
    assert enc.layer2[0].conv2.stride == (2, 2)  # v1.5: stride on the 3x3 conv


@pytest.mark.parametrize("pad", [(1, 1), (3, 3), (2, 0), (0, 1)])
def test_replicate_pad_equals_aten(pad):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    ph, pw = pad
    assert torch.equal(replicate_pad(x, pad), torch.nn.functional.pad(x, (pw, pw, ph, ph), mode="replicate"))
    torch.autograd.gradcheck(lambda t: replicate_pad(t, pad), (x,))


def test_replicate_conv_compiled_equals_eager():
    """Under torch.compile the padding is built from slices (ReplicateConv2d): same values and gradients."""
    conv = ReplicateConv2d(3, 4, 7, 2, 3)
    x = torch.randn(2, 3, 11, 10, requires_grad=True)
    out = {}
    for name, fn in (("eager", conv), ("compiled", torch.compile(conv, backend="aot_eager", fullgraph=True))):
        y = fn(x)
        out[name] = (y, *torch.autograd.grad(y.square().sum(), (x, conv.weight)))
    for a, b in zip(out["compiled"], out["eager"]):
        torch.testing.assert_close(a, b)


def test_replicate_padding_on_spatial_convs():
    enc = ResNet("resnet18")
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
    assert convs and all(m.padding_mode == "replicate" for m in convs)


def test_conditional_bn_selects_modality():
    torch.manual_seed(1)
    enc = ResNet("resnet18").eval()
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.running_mean, -0.1, 0.1)
    x = torch.rand(1, 3, 64, 64)
    assert not torch.allclose(enc(x, PHOTO), enc(x, SKETCH))
    shared = ResNet("resnet18", shared_bn=True).eval()
    assert list(shared.state_dict()) == list(enc.state_dict())  # same norms.0 / norms.1 layout
    shared.load_state_dict({k: v for k, v in enc.state_dict().items() if ".norms.1." not in k}, strict=False)
    assert torch.equal(shared(x, PHOTO), shared(x, SKETCH))
    assert torch.allclose(shared(x, PHOTO), enc(x, PHOTO), atol=1e-6)


def test_bad_modality_and_arch():
    with pytest.raises(ValueError, match="modality"):
        ResNet()(torch.rand(1, 3, 32, 32), 2)
    with pytest.raises(ValueError, match="arch"):
        ResNet("resnet34")
    with pytest.raises(ValueError, match=r"expected images \(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        ResNet()(torch.rand(1, 1, 32, 32), PHOTO)
    with pytest.raises(TypeError, match="floating-point images normalised .* got torch.uint8"):
        image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
        PSCNet().predict_flow(image, image)


def test_imagenet_checkpoint_init(tmp_path):
    torchvision = pytest.importorskip("torchvision", reason="the torchvision key-layout check needs torchvision")
    tv = torchvision.models.resnet18()
    nn.init.uniform_(tv.bn1.running_var, 1, 2)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    enc = ResNet("resnet18")
    load_imagenet(enc, str(tmp_path / "r18.pth"))
    assert torch.equal(enc.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    assert torch.equal(enc.bn1.norms[0].running_var, tv.bn1.running_var)
    assert torch.equal(enc.bn1.norms[1].running_var, tv.bn1.running_var)
    moco = {f"module.encoder_q.{k}": v for k, v in tv.state_dict().items()}
    torch.save({"state_dict": moco}, tmp_path / "moco.pth")
    load_imagenet(ResNet("resnet18"), str(tmp_path / "moco.pth"))


def test_moco_queue_and_momentum():
    torch.manual_seed(0)
    enc = ResNet("resnet18")
    moco = MoCo(enc, dim=16, K=12, m=0.5)
    with torch.no_grad():
        enc.conv1.weight.add_(1.0)
    before_k = moco.encoder_k.conv1.weight.clone()
    x = torch.rand(4, 3, 32, 32)
    loss = moco(x, PHOTO, x.flip(-1), SKETCH)
    assert torch.isfinite(loss) and loss.requires_grad
    expected = 0.5 * before_k + 0.5 * enc.conv1.weight.detach()
    assert torch.allclose(moco.encoder_k.conv1.weight, expected)
    assert int(moco.queue_ptr) == 4
    moco(x, PHOTO, x, SKETCH)
    moco(x, PHOTO, x, SKETCH)
    assert int(moco.queue_ptr) == 0  # wraps around K = 12
    assert torch.allclose(moco.queue.norm(dim=0), torch.ones(12), atol=1e-5)
    assert not any(p.requires_grad for p in moco.encoder_k.parameters())


def test_stn_compiles_to_one_graph():
    """The STN with pscfast's ops (backend chosen while tracing) is one torch.compile graph, eager values."""
    torch.manual_seed(0)
    stn = PSCNet().stn
    for m in stn.modules():  # weights large enough that the three levels move the flow
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=0.05)
    src = [torch.rand(2, 128, 8, 8), torch.rand(2, 256, 4, 4)]
    tgt = [torch.rand(2, 128, 8, 8), torch.rand(2, 256, 4, 4)]
    assert torch._dynamo.explain(stn)(src, tgt).graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(stn, backend="aot_eager", fullgraph=True)
    for fn in (compiled, stn):
        stn.zero_grad()
        flow = fn(src, tgt)
        flow.square().sum().backward()
        grads = [p.grad.clone() for p in stn.parameters()]
        if fn is compiled:
            flow_c, grads_c = flow.detach(), grads
    # aot_eager decomposes batch norm: float32 reduction-order differences only. A flow that differs by
    # 1e-5 can cross a pixel edge of the bilinear sampling and move single gradient entries: compare the whole.
    torch.testing.assert_close(flow_c, flow.detach(), rtol=1e-4, atol=1e-4)
    diff = torch.cat([(a - b).flatten() for a, b in zip(grads_c, grads)])
    assert diff.norm() <= 1e-2 * torch.cat([b.flatten() for b in grads]).norm()
