"""PSC's stage 1: MoCo v2 on photo-sketch pairs trains the encoder (Lu, Wang, Fan, ICML 2023; the authors'
release): a photo and one of its sketches are a positive pair, their roles as query and key swap every
iteration, and the negatives come from the queue of earlier keys (shuffle-BN and all-gather under DDP).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from pscfast.data import normalize
from pscfast.models import PHOTO, SKETCH, MoCo, PSCNet
from pscfast.training.augment import augment_images
from pscfast.training.share import shared_copy
from pscfast.training.stage import PSCStage


class EncoderStage(PSCStage):
    """Stage 1 on ``model.encoder``; ``moco`` holds the key encoder, the heads and the queue."""

    number = 1
    find_unused_parameters = True  # each conditional BN uses one modality per call: the other one is unused

    def build(self, model: PSCNet, data):
        cfg = self.cfg
        if cfg.moco_k >= len(data) and cfg.epochs_encoder > 1 and self.rank == 0:
            # after one epoch a queue of >= N keys holds an older key of every pair: the query's own too
            warnings.warn(f"stage 1: the MoCo queue (moco_k={cfg.moco_k}) is not shorter than the {len(data)} "
                          f"training pairs, so after the first epoch it holds keys of each query's own pair as "
                          f"negatives; set moco_k below {len(data)}", stacklevel=3)
        encoder = shared_copy(model.encoder).train()
        self.moco = MoCo(encoder, cfg.moco_dim, cfg.moco_k, cfg.moco_m, cfg.moco_t).to(self.device)
        params = [p for p in self.moco.parameters() if p.requires_grad]
        return self.moco, params, cfg.lr_encoder, {"moco.": self.moco}

    def compiled(self, net: nn.Module, backend: str | None):
        # the encoders only: the queue update mutates a buffer that the loss's backward reads, which a compiled
        # MoCo forward (AOTAutograd saves the buffer, not the clone) turns into a version error
        if backend is not None:
            for encoder in (self.moco.encoder_q, self.moco.encoder_k):
                encoder.compile(backend=backend)
        return net

    def losses(self, batch) -> dict[str, torch.Tensor]:
        photo, sketch = self.images(batch)
        views = [(normalize(augment_images(photo, self.aug, self.gen)), PHOTO),
                 (normalize(augment_images(sketch, self.aug, self.gen)), SKETCH)]
        (q, m_q), (k, m_k) = views if self.step % 2 == 0 else views[::-1]  # roles swap every iteration
        with self.autocast():
            loss = self.forward(q, m_q, k, m_k)
        return {"loss": loss}

    def extra_state(self) -> dict:
        # the query encoder is the model's own encoder, saved with the model
        return {"moco": {k: v for k, v in self.moco.state_dict().items() if not k.startswith("encoder_q.")}}

    def load_extra_state(self, state: dict) -> None:
        if "moco" in state:
            self.moco.load_state_dict(state["moco"], strict=False)
