"""The two first stages: ``AutoencoderKL`` (SD 2.1, SVD's concat-conditioning encoder) and ``TemporalAutoencoder``.

* ``AutoencoderKL``: Encoder + Decoder + ``quant_conv`` / ``post_quant_conv`` (ldm ``AutoencoderKL``; sgm's
  ``AutoencoderKLModeOnly`` for ``conditioner.embedders.3.encoder``). Keys match SD 2.1 ``first_stage_model``.
* ``TemporalAutoencoder``: Encoder + ``VideoDecoder`` and NO quant convs (sgm ``AutoencodingEngine`` of
  svd.yaml). Keys match SVD ``first_stage_model``. ``quant_convs=True`` adds the KL pair, so a temporal decoder
  can sit on SD 2.1's latent space (``temporal_init.temporal_from_kl``); that layout is ours, not an official one.
  ``post_quant_conv=False`` then drops the decoder half of the pair (folded into ``decoder.conv_in``): the layout
  the ``temporal_decoder`` stage trains, which diffusers' ``AutoencoderKLTemporalDecoder`` holds exactly.

Both return a ``DiagonalGaussianDistribution`` from ``encode`` and scale latents by ``scale_factor`` in
``encode_latents`` / ``decode_latents`` (sgm ``DiffusionEngine.encode_first_stage`` / ``decode_first_stage``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .decoder import Decoder
from .distributions import DiagonalGaussianDistribution
from .encoder import Encoder
from .spec import AutoencoderSpec
from .temporal_decoder import VideoDecoder, VideoKernelSize

# SD 2.1 KL-f8 latent scale (sgm DiffusionEngine ``scale_factor``); the single place it is defined.
LATENT_SCALE_FACTOR = 0.18215


def _chunks(x: torch.Tensor, chunk_size: int | None) -> tuple[torch.Tensor, ...]:
    if chunk_size is None:
        return (x,)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}; use a positive number of frames, or None for one chunk")
    return x.split(chunk_size)


class _LatentAutoencoder(nn.Module):
    """Chunked, scaled latent helpers shared by both autoencoders; subclasses define ``encode`` / ``decode``."""

    def __init__(self, *, scale_factor: float) -> None:
        super().__init__()
        # A plain float, not a buffer: the official state dicts hold no scale.
        self.scale_factor = scale_factor

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        raise NotImplementedError

    def decode(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def _decode_group(self, num_frames: int | None) -> int:
        """Frames that must stay together in one decode chunk (1 for the image decoder)."""
        return 1

    def encode_latents(
        self,
        x: torch.Tensor,
        *,
        chunk_size: int | None,
        sample: bool,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Images ``(N, 3, H, W)`` in [-1, 1] -> scaled latents ``(N, C, H/8, W/8)``, ``chunk_size`` images at a time.

        ``sample=False`` takes the posterior mean (``AutoencoderKLModeOnly``). The encoder works per image, so
        the result does not depend on ``chunk_size`` (with ``sample=True`` the noise is drawn chunk by chunk).
        """
        latents = []
        for chunk in _chunks(x, chunk_size):
            posterior = self.encode(chunk)
            latents.append(posterior.sample(generator=generator) if sample else posterior.mode())
        return torch.cat(latents) * self.scale_factor

    def decode_latents(self, z: torch.Tensor, *, chunk_size: int | None, num_frames: int | None = None) -> torch.Tensor:
        """Scaled latents ``(B*T, C, h, w)`` -> images ``(B*T, 3, H, W)``, ``chunk_size`` frames at a time.

        For the temporal decoder ``chunk_size`` must be a multiple of ``num_frames``: each chunk holds whole
        clips, and temporal mixing happens only within a clip of ``num_frames`` frames, so the result does not
        depend on ``chunk_size``. sgm's ``decode_first_stage`` instead calls ``decode(chunk,
        timesteps=len(chunk))``: with ``decoding_t`` smaller than the clip length each chunk is decoded as its
        own short clip. Reproduce that with ``num_frames=chunk_size`` (and ``B*T`` a multiple of it).
        """
        group = self._decode_group(num_frames)
        if z.shape[0] % group:
            raise ValueError(f"{z.shape[0]} latents are not whole clips of num_frames={num_frames}")
        if chunk_size is not None and chunk_size % group:
            raise ValueError(
                f"chunk_size={chunk_size} splits clips of num_frames={num_frames}; use a multiple of {group}"
            )
        z = z / self.scale_factor
        return torch.cat([self.decode(chunk, num_frames=num_frames) for chunk in _chunks(z, chunk_size)])


class AutoencoderKL(_LatentAutoencoder):
    """SD 2.1 KL-f8 autoencoder; keys ``encoder.*``, ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*``."""

    def __init__(self, spec: AutoencoderSpec | None = None, *, scale_factor: float = LATENT_SCALE_FACTOR) -> None:
        super().__init__(scale_factor=scale_factor)
        spec = spec or AutoencoderSpec()
        if not spec.double_z:
            raise ValueError("AutoencoderKL needs double_z=True (the encoder must output mean and logvar)")
        self.spec = spec
        self.encoder = Encoder(spec)
        self.decoder = Decoder(spec)
        self.quant_conv = nn.Conv2d(2 * spec.z_channels, 2 * spec.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(spec.embed_dim, spec.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        return DiagonalGaussianDistribution(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        """Unscaled latents ``(N, embed_dim, h, w)`` -> images; ``num_frames`` is ignored (frames are independent)."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, *, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruction and posterior (ldm ``AutoencoderKL.forward``)."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


class TemporalAutoencoder(_LatentAutoencoder):
    """SVD first stage (sgm ``AutoencodingEngine``): ``encoder.*`` + ``decoder.*`` (VideoDecoder), no quant convs.

    ``quant_convs=True`` adds ``quant_conv`` / ``post_quant_conv`` as in ``AutoencoderKL`` (moments ->
    ``quant_conv`` -> posterior; ``z`` -> ``post_quant_conv`` -> decoder), the layout ``temporal_from_kl`` builds
    to finetune a temporal decoder on SD 2.1's KL latent space. The default keeps SVD's layout and keys exactly.
    ``post_quant_conv`` (default: ``quant_convs``) keeps or drops the decoder's 1x1 conv on its own.
    """

    def __init__(
        self,
        spec: AutoencoderSpec | None = None,
        *,
        video_kernel_size: VideoKernelSize = (3, 1, 1),
        merge_factor: float = 0.0,
        scale_factor: float = LATENT_SCALE_FACTOR,
        quant_convs: bool = False,
        post_quant_conv: bool | None = None,
    ) -> None:
        super().__init__(scale_factor=scale_factor)
        spec = spec or AutoencoderSpec()
        post_quant_conv = quant_convs if post_quant_conv is None else post_quant_conv
        if not spec.double_z:
            raise ValueError("TemporalAutoencoder needs double_z=True (the encoder must output mean and logvar)")
        if not (quant_convs and post_quant_conv) and spec.embed_dim != spec.z_channels:
            raise ValueError(
                f"TemporalAutoencoder without both quant convs needs embed_dim == z_channels (got "
                f"embed_dim={spec.embed_dim}, z_channels={spec.z_channels}); set them equal or pass quant_convs=True"
            )
        self.spec = spec
        self.encoder = Encoder(spec)
        self.decoder = VideoDecoder(spec, video_kernel_size=video_kernel_size, merge_factor=merge_factor)
        self.quant_conv = nn.Conv2d(2 * spec.z_channels, 2 * spec.embed_dim, 1) if quant_convs else None
        self.post_quant_conv = nn.Conv2d(spec.embed_dim, spec.z_channels, 1) if post_quant_conv else None

    def encode(self, x: torch.Tensor) -> DiagonalGaussianDistribution:
        """Per-frame posterior. sgm's DiagonalGaussianRegularizer samples it; pick ``sample()`` or ``mode()``."""
        moments = self.encoder(x)
        return DiagonalGaussianDistribution(moments if self.quant_conv is None else self.quant_conv(moments))

    def decode(self, z: torch.Tensor, *, num_frames: int | None = None) -> torch.Tensor:
        """Unscaled latents ``(B*T, C, h, w)`` with ``num_frames=T`` -> frames ``(B*T, 3, H, W)``."""
        if num_frames is None:
            raise ValueError("the temporal decoder needs num_frames (frames per clip, T in (B*T, C, h, w))")
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z, timesteps=num_frames)

    def _decode_group(self, num_frames: int | None) -> int:
        if num_frames is None or num_frames < 1:
            raise ValueError(f"num_frames={num_frames}; the temporal decoder needs the frames per clip (>= 1)")
        return num_frames

    def forward(
        self,
        x: torch.Tensor,
        *,
        num_frames: int,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Reconstruction of ``(B*T, 3, H, W)`` frames and their posterior."""
        posterior = self.encode(x)
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        return self.decode(z, num_frames=num_frames), posterior


def build_autoencoder(
    kind: Literal["image", "temporal"],
    spec: AutoencoderSpec | None = None,
    *,
    scale_factor: float = LATENT_SCALE_FACTOR,
) -> AutoencoderKL | TemporalAutoencoder:
    """``image``: SD 2.1 AutoencoderKL (also SVD's concat encoder); ``temporal``: SVD's first stage."""
    if kind == "image":
        return AutoencoderKL(spec, scale_factor=scale_factor)
    if kind == "temporal":
        return TemporalAutoencoder(spec, scale_factor=scale_factor)
    raise ValueError(f"kind={kind!r}; choose 'image' or 'temporal'")
