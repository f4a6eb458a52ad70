"""How far an encoder's features can carry PSC's warp estimator: the stage-2 objective optimised per test pair.

The STN only parameterises 16x16 flows and is trained to lower the stage-2 loss (weighted perceptual
similarity 0.1 + forward-backward consistency 1.0) through the frozen encoder. :class:`FlowProbe` skips the
STN: for each test pair it optimises the fwd and bwd grids themselves against that same loss, with Adam from
the identity (where the STN's init starts), and returns the flows it reaches. If they do not beat the identity
flow on PCK, the loss does not lead from there toward the true correspondence with these features, and an
estimator trained on it has nothing to learn; if they do, the gap to a trained model is the estimator's. It is
a local search, not a proof.

``control=GroundTruthFlows(root)`` (synthetic benchmark only) is the positive control: the sketch is replaced by
the photo warped with the true deformation, so even a random encoder's features match, and the probe must then
beat the identity (measured on the default synthetic set: PCK@0.10 63.5 against the identity's 50.8).

    probe = FlowProbe(encoder)                              # frozen; eval mode for its BN
    result = evaluate(probe, PSCTestPairs(root, csv))       # PCK of the optimised flows beside the identity
"""
from __future__ import annotations

import torch

from pscfast import ops
from pscfast.data import normalize, resize
from pscfast.evaluation.ground_truth import control_sketch
from pscfast.losses.psc import stage2_loss
from pscfast.models import PHOTO, SKETCH


class FlowProbe:
    """predict_fn for :func:`pscfast.evaluation.evaluate`: [0, 1] images (N, 3, H, W) -> optimised (fwd, bwd)
    16x16 grids. ``encoder``: a :class:`pscfast.models.ResNet` (``PSCNet.encoder``), put in eval mode and frozen;
    images are resized to ``image_size`` (the resolution the encoder works at) and ImageNet-normalised.
    ``progress``: a progress bar over each batch's steps."""

    def __init__(self, encoder, steps: int = 50, lr: float = 0.005, image_size: int = 256, sim_weight: float = 0.1,
                 con_weight: float = 1.0, tau: float = 0.001, control=None, backend: str | None = None,
                 progress: bool = False):
        if steps < 0:
            raise ValueError(f"FlowProbe: steps must be non-negative, got {steps}")
        if not lr > 0:
            raise ValueError(f"FlowProbe: lr must be positive, got {lr}")
        if image_size < 32:
            raise ValueError(f"FlowProbe: image_size must be at least 32 (layer3 has stride 16), got {image_size}")
        self.encoder = encoder.eval().requires_grad_(False)
        self.steps, self.lr, self.size, self.tau, self.backend = steps, lr, image_size, tau, backend
        self.weights = (sim_weight, con_weight)
        self.control, self.progress = control, progress
        self.losses: list[float] = []  # the loss at every step of the last batch

    def _warp(self, image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return ops.warp(image, grid, out_size=tuple(image.shape[-2:]), padding_mode="border", backend=self.backend)

    def __call__(self, photo: torch.Tensor, sketch: torch.Tensor, batch=None):
        photo, sketch = normalize(resize(photo, self.size)), normalize(resize(sketch, self.size))
        sketch_modality = SKETCH
        if self.control is not None:
            sketch, sketch_modality = control_sketch(self.control, photo, batch, "FlowProbe", self.backend), PHOTO
        enc = self.encoder
        with torch.enable_grad():  # evaluate() runs under no_grad
            with torch.no_grad():
                f_photo, f_sketch = enc.features(photo, PHOTO), enc.features(sketch, sketch_modality)
            identity = ops._reference.identity_grid(len(photo), 16, 16, dtype=photo.dtype, device=photo.device)
            fwd, bwd = identity.clone().requires_grad_(True), identity.clone().requires_grad_(True)
            opt = torch.optim.Adam([fwd, bwd], lr=self.lr)
            self.losses = []
            steps = range(self.steps)
            if self.progress:
                from tqdm import tqdm
                steps = tqdm(steps, desc="probe", unit="step", leave=False)
            for step in steps:
                fw_photo = enc.features(self._warp(photo, fwd), PHOTO)
                fw_sketch = enc.features(self._warp(sketch, bwd), sketch_modality)
                loss = stage2_loss(fw_photo, f_sketch, fw_sketch, f_photo, fwd, bwd, *self.weights, self.tau,
                                   self.backend)["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"FlowProbe: the loss became {loss.item()} at step {step}")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.losses.append(loss.item())
        return fwd.detach(), bwd.detach()
