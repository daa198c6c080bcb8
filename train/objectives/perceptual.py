"""An LPIPS-style perceptual distance on frozen VGG16 features, loaded from a local torchvision state dict.

ldm's KL-f8 autoencoder was trained with learned LPIPS (``LPIPSWithDiscriminator``, perceptual weight 1.0).
This is LPIPS's unlearned ``lpips=False`` variant (Zhang et al. 2018, Eq. 1 with ``w_l = 1``): nothing is
downloaded, so the user names a local file holding ``torchvision.models.vgg16`` weights (only ``features.*``
is read; ``.safetensors`` or a pickle read weights-only by ``models.checkpoints.load_state_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from models.checkpoints import load_state_dict

# torchvision's VGG16 ``features`` (config "D"): channel counts of the 3x3 convs, "M" a 2x2 max pool.
_VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Indices in ``features`` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the LPIPS taps).
VGG16_TAPS: tuple[int, ...] = (3, 8, 15, 22, 29)
# torchvision's ImageNet normalisation; LPIPS's ScalingLayer is the same map written for inputs in [-1, 1].
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_NORM_EPS = 1e-10


def _vgg16_features() -> nn.Sequential:
    """``torchvision.models.vgg16().features[:30]`` with the same indices, hence the same state-dict keys."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in _VGG16_CFG:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(in_ch, int(item), kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            in_ch = int(item)
    return nn.Sequential(*layers)


def vgg16_feature_keys() -> list[str]:
    """The torchvision VGG16 keys this module reads (``features.{i}.weight`` / ``.bias`` of the 13 convs)."""
    return [f"features.{k}" for k in _vgg16_features().state_dict()]


class VGGPerceptual(nn.Module):
    """``d(x, y) = sum_l mean_{h,w} sum_c (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2`` per sample.

    ``f_l`` are the VGG16 relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 activations of ``(x + 1) / 2``
    normalised with ImageNet mean and std; ``|.|`` is the L2 norm over channels at each pixel (+1e-10), so each
    layer contributes at most 4. ``x``, ``y``: ``(N, 3, H, W)`` in [-1, 1]; returns ``(N,)``. The weights are
    frozen (``requires_grad=False``); gradients flow to the inputs only.
    """

    def __init__(self, vgg16_state_dict: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        self.features = _vgg16_features()
        wanted = vgg16_feature_keys()
        missing = [k for k in wanted if k not in vgg16_state_dict]
        if missing:
            raise ValueError(
                f"the VGG16 weights lack {missing[:4]}{' ...' if len(missing) > 4 else ''}; pass the state dict of "
                "torchvision.models.vgg16 (keys features.{i}.weight / .bias), e.g. saved with "
                "models.checkpoints.save_state_dict(torchvision.models.vgg16(weights='DEFAULT').state_dict(), path)"
            )
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.load_state_dict({k: vgg16_state_dict[k] for k in wanted})
        self.features.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> VGGPerceptual:
        """Load torchvision VGG16 weights from a local ``.safetensors`` / ``.pth`` file (weights-only)."""
        return cls(load_state_dict(path))

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x.to(self.mean.dtype) + 1.0) / 2.0 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in VGG16_TAPS:
                out.append(h / (h.square().sum(dim=1, keepdim=True).sqrt() + _NORM_EPS))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x and y must both be (N, 3, H, W); got {tuple(x.shape)} and {tuple(y.shape)}")
        taps_x = self._taps(x)
        taps_y = self._taps(y)
        per_layer = [(fx - fy).square().sum(dim=1).mean(dim=(1, 2)) for fx, fy in zip(taps_x, taps_y, strict=True)]
        return torch.stack(per_layer).sum(dim=0)
