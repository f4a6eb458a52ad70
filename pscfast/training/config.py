"""Training configuration of PSC (frozen dataclass), loadable from train/configs/*.json."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from pscfast._config import check_types, load_json
from pscfast.models import ARCHS, MatchStartConfig
from pscfast.models.warm_start import median_side
from pscfast.ops._dispatch import parse_backends

STAGES = {"encoder": (1,), "estimator": (2,), "both": (1, 2), "refine": (3,), "estimator+refine": (2, 3),
          "all": (1, 2, 3), "1": (1,), "2": (2,), "3": (3,)}
AMP = ("auto", "bf16", "fp16", "none")


@dataclass(frozen=True)
class TrainConfig:
    """Defaults: the small CPU run of ``python train/run.py`` on the synthetic benchmark (a few minutes on 2 cores):
    the ImageNet-pretrained EfficientNet-Lite0, frozen, at 192x192; stage 2: the STN starts from the soft match
    of the encoder's stride-16 features (match_start) and its residual blocks train on known warps of the
    training images (warp_weight); then stage 3 adds a 32x32 refinement level that starts from its local cost
    volume's own match (refine_match), untrained (epochs_refine 0: training it adds nothing measurable).
    docs/experiments.md: on these features PSC's similarity and consistency losses drive the STN below the
    identity flow, and 150 MoCo steps lower the features' matching.
    The paper's settings are in train/configs/paper_r18.json and paper_r101.json; a config file that omits a
    field takes the value here.

    The comment on each field is its ``--help`` text (pscfast._flags)."""
    CHOICES: ClassVar[dict[str, tuple]] = {"stage": tuple(STAGES), "arch": ARCHS, "amp": AMP}

    stage: str = "estimator+refine"      # encoder | estimator | both | refine | estimator+refine | all (1 | 2 | 3)
    arch: str = "efficientnet_lite0"     # the encoder
    shared_bn: bool = False              # True reproduces the release's single BN per pair
    data_root: str = "runs/synthetic"    # Sketchy root (generated there when it is the synthetic default)
    csv_dir: str | None = None           # where train_pairs_ps.csv / test_pairs_ps.csv are (none: data_root)
    out: str = "runs/default"            # output folder: checkpoints, TensorBoard, the correspondence picture
    image_size: int = 192                # training/inference resolution (the paper: 256)
    batch_size: int = 8                  # pairs per step and process
    epochs_encoder: int = 25             # stage 1 epochs
    epochs_estimator: int = 10           # stage 2 epochs
    epochs_refine: int = 0               # stage 3 epochs (0: the levels' parameter-free match alone, see refine_match)
    max_steps_per_epoch: int | None = 12  # at most this many steps per epoch (none: the whole training set)
    lr_encoder: float = 0.03             # stage 1 SGD learning rate (with --resume it replaces the checkpoint's)
    lr_estimator: float = 0.003          # stage 2 SGD learning rate (with --resume it replaces the checkpoint's)
    # stage 3 SGD learning rate (with --resume it replaces the checkpoint's); measured on the default run's
    # 60 steps: 0.03-1 barely move the zero-initialised residual, 10 (or 3 over 120 steps) diverges
    lr_refine: float = 3.0
    momentum: float = 0.9                # SGD momentum
    weight_decay: float = 1e-4           # SGD weight decay
    warmup_epochs: float = 0.25          # linear warm-up before the cosine schedule
    moco_dim: int = 128                  # MoCo head output size
    moco_k: int = 16                     # MoCo queue length, below the 48 pairs of the synthetic set (paper: 8192)
    moco_m: float = 0.99                 # MoCo key-encoder momentum (the paper: 0.999)
    moco_t: float = 0.07                 # MoCo softmax temperature
    sim_weight: float = 0.0              # stage 2 weight of the perceptual similarity loss (the paper: 0.1)
    con_weight: float = 0.0              # stage 2 weight of the forward-backward consistency loss (the paper: 1.0)
    tau: float = 0.001                   # temperature of the similarity loss's softmax
    warp_weight: float = 1.0             # stage 2 weight of the known-warp supervision of the STN (the paper: 0)
    match_start: bool = True             # start the STN's flow from the features' own soft match, not the identity
    match_temperature: float = 0.02      # its softmax temperature (on cosine similarities)
    match_window: float = 2.0            # its Gaussian window around the best match (cells of the 16x16 grid)
    match_layer: int | None = 1          # the feature layer it matches (0: stride 8, 1: stride 16; none: both)
    match_median: bool = True            # a 3x3 median filter on its flow
    refine_sizes: tuple[int, ...] = (32,)  # stage 3's refinement levels: the side of each one's flow, increasing
    refine_strides: tuple[int, ...] = (4, 8)  # the encoder strides each refinement level correlates
    refine_displacement: int = 1         # the largest displacement of a level's local cost volume (its grid's cells)
    # start each refinement level from its cost volume's own windowed soft-argmax (cosines averaged over the
    # strides), the network's residual adding to it
    refine_match: bool = True
    refine_match_temperature: float = 0.1  # its softmax temperature (on cosine similarities)
    refine_match_window: float = 1.0     # its Gaussian window around the best displacement (cells of the level's grid)
    refine_match_median: int = 5         # the side of a median filter on its displacements (0: none; 3, 5, ...)
    refine_stn: bool = False             # True: stage 3 also trains the STN (on known warps, warp_weight)
    refine_sim_weight: float = 0.0       # stage 3 weight of the perceptual similarity at the finest size
    refine_con_weight: float = 0.0       # stage 3 weight of the forward-backward consistency at the finest size
    refine_warp_weight: float = 1.0      # stage 3 weight of the known-warp loss at the finest size
    augment: bool = False                # the paper: True; False = no appearance, flip or warps
    augment_loop: bool = False           # True: the release's per-sample augmentation loop (benchmarks)
    encoder_train_mode: bool = False     # True: the release's stage 2 (encoder BN in train mode)
    pretrained: bool = True              # start the encoder from ImageNet weights (ignored with init / resume)
    imagenet: str | None = None          # their file (efficientnet_lite0: its package's file by default)
    init: str | None = None              # a pscfast/release checkpoint to start from (e.g. stage-1 weights)
    backend: str | None = None           # pscfast.ops backend ("torch" = reference ops)
    amp: str = "auto"                    # auto (bf16 on CUDA) | bf16 | fp16 | none
    channels_last: bool = False          # channels-last memory layout for the images and the trained model
    compile: bool | str = False          # True or a torch.compile backend name ("inductor", "aot_eager", ...)
    save_every: int = 50                 # epochs between numbered checkpoints (<out>/stage<s>_last.pt: every epoch)
    eval_every: int = 0                  # epochs, 0 = only at the end
    eval_batch_size: int = 16            # batch size of the PCK evaluation
    eval_limit: int | None = None        # evaluate on the first N test pairs only
    workers: int = 0                     # data-loader worker processes
    seed: int = 0                        # seeds the model init, the data order and the augmentation
    device: str = "auto"                 # auto (CUDA when there is one) | cpu | cuda | cuda:N
    resume: str | None = None            # a stage checkpoint written by a run (same --arch, --shared-bn)
    tensorboard: bool = True             # TensorBoard logs in <out>/tb
    progress: bool = True                # a progress bar

    def __post_init__(self):
        check_types(self)  # the CHOICES too
        positive = ("batch_size", "moco_dim", "moco_k", "lr_encoder", "lr_estimator", "lr_refine", "moco_t", "tau",
                    "save_every", "eval_batch_size", "match_temperature", "match_window", "refine_displacement",
                    "refine_match_temperature", "refine_match_window")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"TrainConfig: {name} must be positive, got {getattr(self, name)!r}")
        for name in ("epochs_encoder", "epochs_estimator", "epochs_refine", "warmup_epochs", "momentum", "weight_decay",
                     "sim_weight", "con_weight", "warp_weight", "refine_sim_weight", "refine_con_weight",
                     "refine_warp_weight", "eval_every", "workers"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"TrainConfig: {name} must be non-negative, got {getattr(self, name)!r}")
        if not 0 <= self.moco_m < 1:
            raise ValueError(f"TrainConfig: moco_m must be in [0, 1), got {self.moco_m!r}")
        if self.image_size < 32:
            raise ValueError(f"TrainConfig: image_size must be at least 32 (layer3 has stride 16), "
                             f"got {self.image_size}")
        sizes = self.refine_sizes
        if not sizes or sizes[0] < 2 or list(sizes) != sorted(set(sizes)):
            raise ValueError(f"TrainConfig: refine_sizes must be increasing flow sides of at least 2, got {sizes!r}")
        if not self.refine_strides:
            raise ValueError("TrainConfig: refine_strides must name at least one encoder stride")
        if not median_side(self.refine_match_median):
            raise ValueError(f"TrainConfig: refine_match_median must be an odd side, or 0 for none, got "
                             f"{self.refine_match_median!r}")
        for name in ("max_steps_per_epoch", "eval_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: {name} must be at least 1 or None, got {getattr(self, name)!r}")
        self.compile_backend()
        check_backend(self)

    def compile_backend(self) -> str | None:
        """The torch.compile backend of ``compile`` (True means inductor), or None."""
        if self.compile is True or self.compile == "inductor":
            return "inductor"
        if not self.compile:
            return None
        if self.compile not in torch.compiler.list_backends(exclude_tags=()):
            raise ValueError(f"TrainConfig: compile: unknown torch.compile backend {self.compile!r}; "
                             f"choose from {', '.join(torch.compiler.list_backends())}")
        return self.compile

    def replace(self, **kw) -> "TrainConfig":
        return dataclasses.replace(self, **{k: v for k, v in kw.items() if v is not None})

    @classmethod
    def from_json(cls, path: str, **overrides) -> "TrainConfig":
        """The config a JSON file of fields sets, with ``overrides`` (None values are ignored) on top."""
        return cls(**load_json(cls, path)).replace(**overrides)

    def match_start_config(self) -> MatchStartConfig | None:
        """The STN's warm start (pscfast.models.warm_start) that ``match_start`` asks for, or None."""
        if not self.match_start:
            return None
        layers = None if self.match_layer is None else (self.match_layer,)
        return MatchStartConfig(self.match_temperature, self.match_window, layers, self.match_median)

    def stages(self) -> tuple[int, ...]:
        """The stages the run trains, in order."""
        return STAGES[self.stage]


def check_backend(cfg) -> None:
    """Refuse an unknown pscfast.ops backend before anything runs (the ops would find it at their first call)."""
    if cfg.backend is not None:
        parse_backends(cfg.backend, f"{type(cfg).__name__}: backend")
