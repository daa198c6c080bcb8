"""diffusers interop, the training side: write a ``StableVideoDiffusionPipeline`` folder from a stage export or a
released SVD file (``export_pipeline``). Reading such a folder back (``load_init_weights`` accepts it as ``source``),
the folder's files and the key conversions are ``models/checkpoints/diffusers_folder.py`` and
``models/checkpoints/diffusers_pipeline.py``, which also says what the conversion leaves out and why.

The folder is built under a temporary name beside ``out`` and renamed when complete (``train.checkpointing``); an
existing ``out`` is replaced only with ``overwrite=True``. Writing needs neither diffusers nor transformers (the
tests load every folder with both).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from models.checkpoints import CheckpointSizes, load_official_checkpoint, save_state_dict
from models.checkpoints.diffusers_folder import (
    MODEL_INDEX,
    config_file_name,
    config_json,
    model_index,
    weights_file_name,
)
from models.checkpoints.diffusers_pipeline import Component, ConversionNotes, to_diffusers_pipeline
from train.checkpointing import TMP_MARK, replace_path
from train.sampling import PRESETS
from train.tasks import SVD_TASK

# The image-to-video variants (sampling presets give their frame counts); svd_image_decoder's VAE is an
# AutoencoderKL (frame-wise decoder).
OFFICIAL_VARIANTS = tuple(sorted(PRESETS))
_OFFICIAL_SAMPLE_SIZE = 96  # the released unet/config.json value


def write_diffusers_folder(
    components: Mapping[str, Component],
    out: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``components`` as a pipeline folder at ``out`` (weights cast to ``dtype`` when given)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = out.with_name(f".{out.name}{TMP_MARK}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for name, component in sorted(components.items()):
            folder = tmp / name
            folder.mkdir()
            config = config_json(component, dtype)
            (folder / config_file_name(name)).write_text(json.dumps(config, indent=2) + "\n")
            if component.state_dict is not None:
                weights = component.state_dict
                if dtype is not None:
                    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in weights.items()}
                save_state_dict(weights, folder / weights_file_name(component))
        (tmp / MODEL_INDEX).write_text(json.dumps(model_index(components), indent=2) + "\n")
        if out.exists() and not overwrite:  # appeared while we were writing
            raise FileExistsError(f"{out} appeared while writing; pass overwrite=True to replace it")
        replace_path(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def export_model(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    num_frames: int,
    sample_size: int | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ConversionNotes:
    """Write ``model`` (a ``LatentDiffusion`` or ``OfficialCheckpointModel`` of the i2v layout) as a pipeline."""
    out = Path(out)
    if out.exists() and not overwrite:  # before the conversion, which can take a while at full size
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    components, notes = to_diffusers_pipeline(model, num_frames=num_frames, sample_size=sample_size)
    write_diffusers_folder(components, out, dtype=dtype, overwrite=overwrite)
    return notes


def _stage_model(export: str | os.PathLike[str]) -> tuple[nn.Module, int, int]:
    """The model of an i2v diffusion stage export, its clip length and latent size."""
    from train.export import load_export  # the training stack, only for this route

    loaded = load_export(export)
    if loaded.task != SVD_TASK:
        raise ValueError(
            f"{export} is a {loaded.task} export; StableVideoDiffusionPipeline is image-to-video ({SVD_TASK})"
        )
    return loaded.model, loaded.num_frames, loaded.height // loaded.model.first_stage.spec.downsample_factor


def _official_model(
    checkpoint: str | os.PathLike[str], variant: str, sizes: CheckpointSizes | None
) -> tuple[nn.Module, int, int]:
    """The model of a released file, the variant's clip length and the released latent size."""
    if variant not in OFFICIAL_VARIANTS:
        raise ValueError(f"variant={variant!r}; the SVD pipeline exists for {', '.join(OFFICIAL_VARIANTS)}")
    loaded = load_official_checkpoint(checkpoint, variant=variant, sizes=sizes)
    return loaded.model, PRESETS[variant].num_frames, _OFFICIAL_SAMPLE_SIZE


def export_pipeline(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variant: str | None = None,
    sizes: CheckpointSizes | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ConversionNotes:
    """A stage export folder (``train.export``) of an i2v diffusion stage (``variant=None``), or a released
    ``svd`` / ``svd_xt`` / ``svd_image_decoder`` file of ``variant`` (``sizes``: its network sizes) -> pipeline
    folder at ``out``."""
    if variant is None:
        if sizes is not None:
            raise ValueError("sizes= describes a released file (variant=); a stage export knows its own sizes")
        model, num_frames, sample_size = _stage_model(source)
    else:
        model, num_frames, sample_size = _official_model(source, variant, sizes)
    return export_model(model, out, num_frames=num_frames, sample_size=sample_size, dtype=dtype, overwrite=overwrite)


@torch.no_grad()
def decoder_parity(export: str | os.PathLike[str], folder: str | os.PathLike[str], *, seed: int = 0) -> dict:
    """Our first stage (the export's) against the VAE of the pipeline folder written from it, on the same random
    latents (one clip of the export's length, 6x8 latents): the max abs difference in float32 and in float64, and
    each side's float32 result against its own float64 one (the rounding error of each implementation). In float64
    the mapping shows (a wrong key or layout gives differences far above rounding); float32 differences on trained
    weights, whose decoder activations reach hundreds, sit at the rounding level of either side."""
    import copy

    from diffusers import AutoencoderKLTemporalDecoder, StableVideoDiffusionPipeline

    model, num_frames, _ = _stage_model(export)
    vae = StableVideoDiffusionPipeline.from_pretrained(folder, local_files_only=True).vae.float().eval()
    ours = model.first_stage.float().eval()
    kwargs = {"num_frames": num_frames} if isinstance(vae, AutoencoderKLTemporalDecoder) else {}
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(num_frames, vae.config.latent_channels, 6, 8, generator=g)
    ours32, theirs32 = ours.decode(z, num_frames=num_frames), vae.decode(z, **kwargs).sample
    ours64 = copy.deepcopy(ours).double().decode(z.double(), num_frames=num_frames)
    theirs64 = copy.deepcopy(vae).double().decode(z.double(), **kwargs).sample

    def gap(a: torch.Tensor, b: torch.Tensor) -> float:
        return (a.double() - b.double()).abs().max().item()

    return {
        "vae": type(vae).__name__,
        "max_abs_fp32": gap(ours32, theirs32),
        "max_abs_fp64": gap(ours64, theirs64),
        "ours_fp32_vs_fp64": gap(ours32, ours64),
        "diffusers_fp32_vs_fp64": gap(theirs32, theirs64),
        "output_max_abs": ours64.abs().max().item(),
    }
