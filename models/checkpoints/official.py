"""The released single-file checkpoints (SVD, SVD-XT, SVD image decoder, SD 2.1) and our modules.

``OfficialCheckpointModel`` is a module tree whose ``state_dict()`` keys and shapes are exactly those of the
released file of a variant (RECIPE 1 to 4, ``tests/manifests/``): the UNet under ``model.diffusion_model.``,
the VAE under ``first_stage_model.``, the conditioner under ``conditioner.embedders.N.`` (SVD, SD 2.1 sgm) or
``cond_stage_model.`` (SD 2.1 ldm), and SD 2.1's schedule buffers. Loading is therefore a strict
``load_state_dict``; the only keys allowed to be absent are those the released files may leave out because
the official code never uses them (see ``ABSENT_OK``).

Parameters are created on the ``meta`` device while building for a load, so a 2.4B-parameter checkpoint is
read once into memory, never initialised randomly first.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from ..conditioners import EmbedderSpec, FrozenOpenCLIPEmbedder, GeneralConditioner
from ..conditioners.presets import build_sd21_text_conditioner, build_svd_conditioner
from ..diffusion.ddpm_schedule import ldm_schedule_buffers
from ..diffusion.denoiser import DiscreteDenoiser
from ..latent_diffusion import OfficialModulePaths
from ..unet import UNetSpec, VideoUNet, sd21_unet_spec, svd_unet_spec
from ..vae import AutoencoderKL, AutoencoderSpec, TemporalAutoencoder
from .keys import diff_keys
from .safe_load import load_state_dict

Variant = Literal["svd", "svd_xt", "svd_image_decoder", "sd21", "sd21_sgm"]
VARIANTS: tuple[str, ...] = ("svd", "svd_xt", "svd_image_decoder", "sd21", "sd21_sgm")

# Keys the released files may leave out (sgm loads with strict=False): the OpenCLIP text-tower leftovers of
# the image embedder and the decoder half of the concat-latent VAE, which ``encode()`` never uses.
ABSENT_OK: dict[str, tuple[str, ...]] = {
    "svd": (
        r"conditioner\.embedders\.0\.open_clip\.model\."
        r"(positional_embedding|text_projection|logit_scale|token_embedding\.weight|ln_final\.(weight|bias))",
        r"conditioner\.embedders\.3\.encoder\.(decoder|post_quant_conv)\..*",
    ),
}
ABSENT_OK["svd_xt"] = ABSENT_OK["svd_image_decoder"] = ABSENT_OK["svd"]


@dataclass(frozen=True)
class CheckpointSizes:
    """Network sizes of a layout; the defaults are the released models, tests pass tiny ones."""

    unet: UNetSpec | None = None
    autoencoder: AutoencoderSpec | None = None
    clip_arch: str | Mapping[str, Any] = "ViT-H-14"


class OfficialCheckpointModel(OfficialModulePaths, nn.Module):
    """Our modules arranged so that ``state_dict()`` has the released file's keys for ``variant``."""

    def __init__(self, variant: Variant, *, sizes: CheckpointSizes | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown checkpoint variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        sizes = sizes or CheckpointSizes()
        self.variant = variant
        is_svd = variant.startswith("svd")
        unet_spec = sizes.unet or (svd_unet_spec() if is_svd else sd21_unet_spec())
        self.model = nn.Module()
        self.model.diffusion_model = VideoUNet(unet_spec)
        if variant in ("svd", "svd_xt"):
            self.first_stage_model = TemporalAutoencoder(sizes.autoencoder)
        else:
            self.first_stage_model = AutoencoderKL(sizes.autoencoder)
        if is_svd:
            # The concat-latent embedder has its own SD 2.1 KL-f8 (with quant convs), separate from the first stage.
            self.conditioner = build_svd_conditioner(
                encoder=AutoencoderKL(sizes.autoencoder), clip_arch=sizes.clip_arch
            )
        elif variant == "sd21_sgm":
            self.conditioner = build_sd21_text_conditioner(arch=sizes.clip_arch)
            self.denoiser = DiscreteDenoiser()
        else:
            self.cond_stage_model = FrozenOpenCLIPEmbedder(sizes.clip_arch, layer="penultimate")
            for name, value in ldm_schedule_buffers().items():
                self.register_buffer(name, value)

    def get_conditioner(self) -> GeneralConditioner:
        """The conditioner; for the SD 2.1 ldm layout a text conditioner around ``cond_stage_model``."""
        if self.variant == "sd21":
            return GeneralConditioner([EmbedderSpec(self.cond_stage_model, "txt", ucg_value="")])
        return self.conditioner

    def absent_ok(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in ABSENT_OK.get(self.variant, ()))


@dataclass
class LoadReport:
    """What a load found: keys absent from the file (all of them allowed) and where it came from."""

    variant: str
    source: str
    absent: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        note = f"{len(self.absent)} allowed-absent keys left zero" if self.absent else "every key present"
        return f"{self.variant} from {self.source}: {note}"


@dataclass
class LoadedCheckpoint:
    model: OfficialCheckpointModel
    report: LoadReport

    @property
    def unet(self) -> VideoUNet:
        return self.model.unet

    @property
    def first_stage(self) -> nn.Module:
        return self.model.first_stage

    @property
    def conditioner(self) -> GeneralConditioner:
        return self.model.get_conditioner()


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on ``meta`` (buffers stay real, so non-persistent ones keep their values)."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def check_keys(model: OfficialCheckpointModel, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Raise on any unexplained difference; return the (allowed) absent keys."""
    diff = diff_keys(state_dict, model.state_dict(), sides=("file", "model"), absent_ok=model.absent_ok)
    if diff:
        raise ValueError(
            f"checkpoint does not match the '{model.variant}' layout: {diff.listed('unexpected')}, "
            f"{diff.listed('missing')}, {diff.listed('shapes')}. Is it another variant? choose one of "
            f"{', '.join(VARIANTS)}"
        )
    return diff.absent


def load_official_checkpoint(
    source: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    *,
    variant: Variant,
    sizes: CheckpointSizes | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedCheckpoint:
    """Load a released checkpoint (a path, or an already-loaded state dict) into our modules.

    Zero unexpected keys, zero missing keys except the allowed-absent ones (``ABSENT_OK``), which are left
    at zero and listed in the report. ``.safetensors`` is read directly; pickle formats only with
    ``weights_only=True`` (see ``safe_load``). Weights keep the dtype stored in the file
    unless ``dtype`` is given, e.g. ``torch.float32`` for training.
    """
    state_dict = source if isinstance(source, Mapping) else load_state_dict(source, device=device)
    if dtype is not None:
        state_dict = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
    with torch.device(device), parameters_on_meta():
        model = OfficialCheckpointModel(variant, sizes=sizes)
    absent = check_keys(model, state_dict)
    model.load_state_dict(state_dict, strict=False, assign=True)
    # Parameters absent from the file are still on meta: materialise them as zeros.
    for key in absent:
        owner, _, name = key.rpartition(".")
        module = model.get_submodule(owner)
        old = getattr(module, name)
        zeros = torch.zeros(old.shape, dtype=dtype or old.dtype, device=device)
        setattr(module, name, nn.Parameter(zeros, requires_grad=False))
    # assign=True keeps the file's requires_grad=False tensors; restore trainability of the trainable parts.
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith(("conditioner.", "cond_stage_model.")))
    source_name = "<state dict>" if isinstance(source, Mapping) else os.fspath(source)
    return LoadedCheckpoint(model.eval(), LoadReport(variant, source_name, absent))
