"""A release-format checkpoint gives the release model's flows.

tests/data/golden-release-flows.pt holds the flows that the authors' code (models/PSCNet.py, resnet_cbn.py,
moco.py of cogtoolslab/photo-sketch-correspondence; corr_layer [2, 3], eval mode, CPU float32) computed for two
synthetic photo-sketch pairs, with the deterministic weights of tests/models/release_recipe.py and the BN
statistics it measured. Here the same weights go through a release-format checkpoint file (``module.``
prefix, ``state_dict`` key, every MoCo key present) into pscfast.models.load_checkpoint (shared_bn=True, the
release's single BN per pair) and PSCNet.predict_flow, on every backend and device.
"""
import pytest
import torch

from pscfast.data import normalize
from pscfast.models import load_checkpoint
from tests.models.release_recipe import GOLDEN, recipe_state
from tests.utils import require

golden = torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module", params=["resnet18", "resnet101"])
def release_checkpoint(request, tmp_path_factory):
    arch = request.param
    path = tmp_path_factory.mktemp(arch) / "release.pth.tar"
    state = recipe_state(arch, golden[arch]["bn"])
    torch.save({"epoch": 1, "state_dict": {"module." + k: v for k, v in state.items()}}, path)
    return arch, path


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
def test_release_checkpoint_gives_the_release_flows(release_checkpoint, backend, device, monkeypatch):
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is slow at R101; the Triton correlation is checked on CPU in tests/ops")
    require("correlation", backend, device, torch.float32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions, as the golden's
    arch, path = release_checkpoint
    model = load_checkpoint(str(path), shared_bn=True).eval().to(device)
    model.set_backend(backend)
    photo = normalize(golden["photo"].float() / 255).to(device)
    sketch = normalize(golden["sketch"].float() / 255).to(device)
    with torch.no_grad():
        fwd, bwd = (f.cpu() for f in model.predict_flow(photo, sketch))
    ref = golden[arch]
    # flows are O(1) grid coordinates. Measured on the machine that made the golden: torch backend bitwise
    # equal, cpp within 1.3e-6 (its correlation sums in another order); 1e-5 leaves room for other CPUs' BLAS.
    # A GPU's convolution algorithms sum in other orders through 101 layers: 1e-4 there
    atol = 1e-5 if device == "cpu" else 1e-4
    torch.testing.assert_close(fwd, ref["fwd"], rtol=0, atol=atol)
    torch.testing.assert_close(bwd, ref["bwd"], rtol=0, atol=atol)
    # and the flows are not trivially the identity: the test would catch a model that ignores its input
    assert (ref["fwd"] - model.stn.base_map.cpu()).abs().mean() > 0.05
