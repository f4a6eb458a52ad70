"""SFNet's computation as the authors' release performs it (Lee et al., TPAMI 2020: the release's model.py,
custom_loss.py and custom_dataset.py), restated in plain PyTorch on pscfast's backbone: what
tests/models/test_sfnet.py compares pscfast's SFNet, its loss and its mask downsampling with.

The release builds its grids with linspace(-1, 1) and samples them with grid_sample under the PyTorch it was
written for, whose only behaviour was align_corners=True; that is stated here explicitly. Its feature maps
have the same h x w in both images (feature_H x feature_W), not necessarily square.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

EPS = 1e-6  # under the square root of the release's L2normalize


def l2normalize(x: torch.Tensor) -> torch.Tensor:
    return x / ((x ** 2).sum(1, keepdim=True) + EPS) ** 0.5


def adaptation(layer, x: torch.Tensor) -> torch.Tensor:
    """adap_layer_feat3/4 in eval mode: twice x = x + ReLU(BN(conv(x))), from the module's parameters."""
    for conv, bn, _ in layer.blocks:
        y = F.conv2d(x, conv.weight, conv.bias, padding=conv.padding)
        y = F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        x = x + F.relu(y)
    return x


def matching(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    """matching_layer: both maps L2-normalised, all pairs by bmm, channel = target position, spatial = source
    position, then a ReLU."""
    src, tgt = l2normalize(src), l2normalize(tgt)
    b, c, h, w = src.shape
    ht, wt = tgt.shape[-2:]
    corr = torch.bmm(tgt.reshape(b, c, ht * wt).transpose(1, 2), src.reshape(b, c, h * w))
    return F.relu(corr.view(b, ht * wt, h, w))


def kernel_soft_argmax(corr: torch.Tensor, beta: float, sigma: float) -> torch.Tensor:
    """find_correspondence's kernel soft argmax on an h x w grid in both images -> grid (b, h, w, 2)."""
    b, hw, h, w = corr.shape
    idx = corr.max(dim=1)[1]
    idx_y = (idx // w).view(b, 1, 1, h, w).to(corr.dtype)
    idx_x = (idx % w).view(b, 1, 1, h, w).to(corr.dtype)
    x = torch.arange(w, dtype=corr.dtype).view(1, 1, w, 1, 1)
    y = torch.arange(h, dtype=corr.dtype).view(1, h, 1, 1, 1)
    gauss = torch.exp(-((x - idx_x) ** 2 + (y - idx_y) ** 2) / (2 * sigma ** 2)).view(b, hw, h, w)
    z = gauss * corr
    e = torch.exp(beta * (z - z.max(dim=1, keepdim=True)[0]))
    m = (e / e.sum(dim=1, keepdim=True)).view(b, h, w, h, w)  # (target y, target x) x (source y, source x)
    gx = (m.sum(dim=1) * torch.linspace(-1, 1, w, dtype=corr.dtype).view(1, w, 1, 1)).sum(dim=1)
    gy = (m.sum(dim=2) * torch.linspace(-1, 1, h, dtype=corr.dtype).view(1, h, 1, 1)).sum(dim=1)
    return torch.stack((gx, gy), dim=-1)


def features(model, image: torch.Tensor, modality: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapted conv4 and conv5 maps (pscfast's layer3, layer4), conv5 doubled in size as the release does."""
    l3 = model.encoder.features(image, modality)[1]
    l4 = model.encoder._run(model.encoder.layer4, l3, modality)
    a4 = F.interpolate(adaptation(model.adapt4, l4), scale_factor=2, mode="bilinear", align_corners=True)
    return adaptation(model.adapt3, l3), a4


def forward(model, src_img, tgt_img, src_modality: int, tgt_modality: int, beta=50.0, sigma=5.0):
    """SFNet.forward: (grid_S2T, grid_T2S), each (b, h, w, 2); grid_S2T lives on the source, points into the
    target."""
    (s3, s4), (t3, t4) = features(model, src_img, src_modality), features(model, tgt_img, tgt_modality)
    c3, c4 = matching(s3, t3), matching(s4, t4)
    b, hw, h, w = c3.shape
    transpose = lambda c: c.view(b, hw, hw).transpose(1, 2).reshape(b, hw, h, w)  # noqa: E731
    s2t = l2normalize(c3 * c4)
    t2s = l2normalize(transpose(c3) * transpose(c4))
    return kernel_soft_argmax(s2t, beta, sigma), kernel_soft_argmax(t2s, beta, sigma)


def _flow(grid: torch.Tensor) -> torch.Tensor:
    """grid (b, h, w, 2) -> displacement (b, 2, h, w) from the regular linspace grid."""
    b, h, w, _ = grid.shape
    gy, gx = torch.meshgrid(torch.linspace(-1, 1, h, dtype=grid.dtype), torch.linspace(-1, 1, w, dtype=grid.dtype),
                            indexing="ij")
    return grid.permute(0, 3, 1, 2) - torch.stack((gx, gy))[None]


def _smoothness(flow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """get_flow_smoothness: one [-1, 0, 1] kernel over both flow channels (out_channels 1, so their
    differences add), the flow zero-padded, halved, absolute, masked; (b, 2, h, w)."""
    k = torch.tensor([-1.0, 0.0, 1.0], dtype=flow.dtype)
    dx = F.conv2d(F.pad(flow, (1, 1, 0, 0)), k.view(1, 1, 1, 3).expand(1, 2, 1, 3)) / 2
    dy = F.conv2d(F.pad(flow, (0, 0, 1, 1)), k.view(1, 1, 3, 1).expand(1, 2, 3, 1)) / 2
    return torch.cat((dx.abs() * mask, dy.abs() * mask), 1)


def loss(grid_s2t, grid_t2s, src_mask, tgt_mask, lambdas=(3.0, 16.0, 0.5)) -> dict[str, torch.Tensor]:
    """SFNet.forward's training outputs, then custom_loss.loss_function, on masks at the grid's size.
    {"loss": the release's total, "mask", "flow", "smooth": its L1, L2, L3 divided by the batch size}."""
    sample = lambda x, g: F.grid_sample(x, g, mode="bilinear", align_corners=True)  # noqa: E731
    flow_s2t, flow_t2s = _flow(grid_s2t), _flow(grid_t2s)
    est_src, est_tgt = sample(tgt_mask, grid_s2t), sample(src_mask, grid_t2s)
    warped_s2t = -sample(flow_t2s, grid_s2t) * src_mask
    warped_t2s = -sample(flow_s2t, grid_t2s) * tgt_mask
    b, _, h, w = src_mask.shape
    fg_src = src_mask.sum(dim=3, keepdim=True).sum(dim=2, keepdim=True) + 1
    fg_tgt = tgt_mask.sum(dim=3, keepdim=True).sum(dim=2, keepdim=True) + 1
    l1 = ((est_src - src_mask) ** 2).sum() / (h * w) + ((est_tgt - tgt_mask) ** 2).sum() / (h * w)
    l2 = (((flow_s2t * src_mask - warped_s2t) ** 2) / fg_src).sum() \
        + (((flow_t2s * tgt_mask - warped_t2s) ** 2) / fg_tgt).sum()
    l3 = (_smoothness(flow_s2t, src_mask) / fg_src).sum() + (_smoothness(flow_t2s, tgt_mask) / fg_tgt).sum()
    return {"loss": (lambdas[0] * l1 + lambdas[1] * l2 + lambdas[2] * l3) / b,
            "mask": l1 / b, "flow": l2 / b, "smooth": l3 / b}


def mask_to_grid(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """custom_dataset's mask_transform2 and binarisation: each (1, H, W) mask resized by PIL's bilinear
    filter to (h, w), foreground where it exceeds 0.1. PIL works on float ("F") images here, so the release's
    8-bit rounding of the resized values (at most 1/510) is left out."""
    out = []
    for m in mask:
        im = Image.fromarray(m[0].double().numpy().astype(np.float32))  # mode "F"
        small = np.asarray(im.resize((size[1], size[0]), Image.BILINEAR))
        out.append(torch.from_numpy(small > 0.1)[None])
    return torch.stack(out).to(mask.dtype)
