"""Loading and saving PSC checkpoints: the authors' release format and pscfast's own.

Release format: a state dict (optionally under ``"state_dict"``, keys optionally prefixed ``module.``) with
keys as in tests/data/release-state-dict-*.tsv: ``encoder_q.*`` and ``stn.*`` are used; the MoCo state
(``encoder_k.*``, ``framework.*``, where ``framework.encoder_q`` repeats ``encoder_q``) and the ``pos_map``
buffer are deliberately ignored; any other key, or a missing model key, is an error.
pscfast format: ``{"format": "pscfast", "arch", "shared_bn", "refine", "model": PSCNet.state_dict(), ...}``
(``refine``: the refinement levels' arguments, :attr:`pscfast.models.refine.Refinement.config`; files without
it hold none), with ``match_start`` (the STN's warm-start settings) when the STN has one; the encoder's
keys tell the arch too (``encoder._conv_stem.*`` EfficientNet-Lite0, ``encoder.layer*`` a ResNet), for files that
record none; a file whose recorded arch disagrees with its keys is refused.
"""
from __future__ import annotations

import os

import torch

from pscfast.models import efficientnet
from pscfast.models._load import atomic_write, load_file
from pscfast.models.psc import PSCNet
from pscfast.models.refine import Refinement
from pscfast.models.warm_start import MatchStartConfig

FORMAT = "pscfast"
_IGNORED_PREFIXES = ("encoder_k.", "framework.encoder_q.", "framework.encoder_k.", "framework.fc_q.",
                     "framework.fc_k.")
_IGNORED_KEYS = ("pos_map", "framework.queue", "framework.queue_ptr")


def _strip(state: dict) -> dict:
    if all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def detect_arch(state: dict, prefix: str) -> str:
    """efficientnet_lite0 from its stem's key; resnet18 / resnet50 / resnet101 from the number of layer3 blocks
    and the presence of conv3."""
    if f"{prefix}_conv_stem.weight" in state:
        return efficientnet.ARCH
    blocks = {k[len(prefix):].split(".")[1] for k in state if k.startswith(prefix + "layer3.")}
    bottleneck = f"{prefix}layer1.0.conv3.weight" in state
    arch = {(2, False): "resnet18", (6, True): "resnet50", (23, True): "resnet101"}.get((len(blocks), bottleneck))
    if arch is None:
        raise ValueError(f"pscfast.models.load_checkpoint: cannot tell the encoder from the keys under {prefix!r} "
                         f"({len(blocks)} layer3 blocks, bottleneck={bottleneck})")
    return arch


def _check_shared(state: dict, path: str) -> None:
    for k, v in state.items():
        if ".norms.0." in k:
            other = state.get(k.replace(".norms.0.", ".norms.1."))
            if other is not None and not torch.equal(v, other):
                raise ValueError(f"pscfast.models.load_checkpoint: {path}: shared_bn=True but {k} and its "
                                 "norms.1 twin differ; load with shared_bn=False")


def release_to_pscnet(state: dict, arch: str | None, shared_bn: bool, path: str = "<state>") -> PSCNet:
    """Build a PSCNet from a release-format state dict (see module docstring), strictly."""
    state = _strip(state)
    arch = arch or detect_arch(state, "encoder_q.")
    model = PSCNet(arch, shared_bn)
    mapped, unknown = {}, []
    for k, v in state.items():
        if k.startswith("encoder_q."):
            mapped["encoder." + k[len("encoder_q."):]] = v
        elif k.startswith("stn."):
            mapped[k] = v
        elif not (k in _IGNORED_KEYS or k.startswith(_IGNORED_PREFIXES)):
            unknown.append(k)
    if unknown:
        raise KeyError(f"pscfast.models.load_checkpoint: {path}: unexpected keys for the release format: "
                       f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    if shared_bn:
        _check_shared(mapped, path)
    _load_strict(model, mapped, path)
    return model


def _load_strict(model: PSCNet, state: dict, path: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise KeyError(f"pscfast.models.load_checkpoint: {path}: missing keys {missing[:5]}"
                       f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}")
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"pscfast.models.load_checkpoint: {path}: shape mismatch: {wrong[:3]}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | os.PathLike, arch: str | None = None, shared_bn: bool | None = None,
                    map_location="cpu", with_config: bool = False):
    """Load a release-format or pscfast checkpoint into a PSCNet in eval mode.

    arch: resnet18/50/101 or efficientnet_lite0, detected from the keys when None (a mismatch with the file is an
    error).
    shared_bn: None = the file's own setting (True for the release, which shares one BN per pair).
    with_config: return ``(model, config)``, config the training configuration the file records (a dict of
    TrainConfig fields; empty for release checkpoints and files saved without one).
    """
    ckpt = load_file(path, "pscfast.models.load_checkpoint", map_location)
    if isinstance(ckpt, dict) and ckpt.get("format") == FORMAT:
        found = detect_arch(ckpt["model"], "encoder.")
        file_arch = ckpt.get("arch") or found
        if found != file_arch:
            raise ValueError(f"pscfast.models.load_checkpoint: {path} records arch {file_arch}, but its encoder's "
                             f"keys are {found}'s")
        if arch is not None and arch != file_arch:
            raise ValueError(f"pscfast.models.load_checkpoint: {path} holds {file_arch}, not {arch}")
        start = ckpt.get("match_start")
        model = PSCNet(file_arch, ckpt["shared_bn"] if shared_bn is None else shared_bn,
                       match_start=None if start is None else MatchStartConfig(**start),
                       refine=_refine_levels(ckpt, path))
        _load_strict(model, ckpt["model"], str(path))
        return (model.eval(), dict(ckpt.get("config") or {})) if with_config else model.eval()
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not any(k.endswith("stn.net_4x.0.weight") for k in state):
        raise ValueError(f"pscfast.models.load_checkpoint: {path} is neither a pscfast checkpoint nor the "
                         "release format (no stn.net_4x.0.weight key)")
    if arch is not None:
        found = detect_arch(_strip(state), "encoder_q.")
        if found != arch:
            raise ValueError(f"pscfast.models.load_checkpoint: {path} holds {found}, not {arch}")
    model = release_to_pscnet(state, arch, True if shared_bn is None else shared_bn, str(path)).eval()
    return (model, {}) if with_config else model


def _refine_levels(ckpt: dict, path) -> list[dict]:
    """The refinement levels a pscfast file records (a list of RefineLevel keyword arguments; none before they
    existed), checked enough to name the file when they are unreadable."""
    levels = ckpt.get("refine") or []
    if not (isinstance(levels, list) and all(isinstance(level, dict) for level in levels)):
        raise ValueError(f"pscfast.models.load_checkpoint: {path}: 'refine' must be a list of dicts (the "
                         f"refinement levels' arguments), got {type(levels).__name__}")
    return levels


def save_checkpoint(path: str | os.PathLike, model: PSCNet, **extra) -> None:
    """Write a pscfast checkpoint atomically (pscfast.models._load.atomic_write: a temporary file of a unique
    name renamed into place; a failed write leaves the previous file and no temporary file); ``extra`` holds
    the training state (optimizer, scheduler, MoCo, RNG, step) for resuming. A model holding non-finite
    values (a diverged run) is refused with FloatingPointError, so it never replaces a good checkpoint."""
    state = model.state_dict()
    bad = nonfinite(state)
    if bad:
        raise FloatingPointError(f"save_checkpoint: {path} not written: {len(bad)} model tensor(s) hold non-finite "
                                 f"values ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})")
    ckpt = {"format": FORMAT, "arch": model.arch, "shared_bn": model.shared_bn, "model": state, **extra}
    start = getattr(model, "match_start", None)  # PSCNet's; other models (SFNet) have none
    if start is not None:
        ckpt["match_start"] = start.to_dict()
    if isinstance(getattr(model, "refine", None), Refinement):  # a PSCNet (SFNet files record no levels)
        ckpt["refine"] = model.refine.config
    atomic_write(path, lambda f: torch.save(ckpt, f), "save_checkpoint")


def nonfinite(state: dict) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or infinite values."""
    return [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(v).all()]
