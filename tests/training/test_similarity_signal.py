"""Stage 2's learning signal, end to end: warp (pscfast.ops) -> frozen encoder -> weighted similarity loss.

When the features of the two images can match, the gradient of the loss with respect to the flow, taken at
the identity, must point toward the true deformation. The target here is the photo itself seen through the
synthetic benchmark's ground-truth deformation, so even a randomly initialised encoder matches it. A sign or
convention error on the path (the warp's grid gradient, the similarity loss's backward, the direction of
the logits' softmax) turns the cosine negative or to chance.
"""
import pytest
import torch
import torch.nn.functional as F

from pscfast import ops
from pscfast.data import PSCTestPairs, normalize, resize, synthetic
from pscfast.evaluation.ground_truth import GroundTruthFlows
from pscfast.losses.psc import similarity
from pscfast.models import PHOTO, PSCNet

SIZE = 128


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """(photos, ground-truth fwd grids) of a tiny synthetic benchmark's test pairs."""
    root = str(tmp_path_factory.mktemp("signal") / "bench")
    synthetic.generate(root, seed=5, classes=("snowman", "fish", "car"), photos_per_class=3,
                       sketches_per_photo=2, test_photos_per_class=1, masks=False)
    data = PSCTestPairs(root, f"{root}/test_pairs_ps.csv")
    items = [data[i] for i in range(len(data))]
    photo = normalize(resize(torch.stack([it["photo"] for it in items]), SIZE))
    batch = {k: [it[k] for it in items] for k in ("photo_path", "sketch_path")}
    fwd, _ = GroundTruthFlows(root)(photo, photo, batch)
    return photo, fwd


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_similarity_gradient_points_to_the_true_deformation(pairs, backend):
    photo, fwd_gt = pairs
    torch.manual_seed(0)
    encoder = PSCNet().encoder.eval()
    warp = lambda image, grid: ops.warp(image, grid, (SIZE, SIZE), "bilinear", "border", True,  # noqa: E731
                                        backend=backend)
    with torch.no_grad():
        target = encoder.features(warp(photo, fwd_gt), PHOTO)  # the photo in the sketch's frame
    identity = ops._reference.identity_grid(len(photo), 16, 16)
    flow = identity.clone().requires_grad_(True)
    loss = similarity(encoder.features(warp(photo, flow), PHOTO), target, backend=backend)
    grad, = torch.autograd.grad(loss, flow)
    cos = F.cosine_similarity(-grad.flatten(1), (fwd_gt - identity).flatten(1), dim=1)
    # chance level for 512 numbers is about +-0.04 (all six positive by chance: 1 in 64); measured: 0.025-0.17
    # per pair, mean 0.09, on both backends
    assert (cos > 0).all(), cos
    assert cos.mean() > 0.05, cos
