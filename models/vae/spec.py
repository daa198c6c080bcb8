"""Typed spec of the SD KL-f8 autoencoder. Field names follow the ldm/sgm ``ddconfig`` so configs map one to one.

``AutoencoderSpec()`` is the SD 2.1 / SVD first stage (RECIPE 4): embed_dim 4, z_channels 4, ch 128,
ch_mult (1, 2, 4, 4) (downsampling 8), 2 ResnetBlocks per level, attention only in the mid block.
``tiny_autoencoder_spec()`` is the test-size network.
"""

from __future__ import annotations

from dataclasses import dataclass

GROUPNORM_GROUPS = 32


@dataclass(frozen=True)
class AutoencoderSpec:
    """Hyperparameters shared by ``Encoder``, ``Decoder`` and ``VideoDecoder``."""

    embed_dim: int = 4
    z_channels: int = 4
    double_z: bool = True
    # Input size the attention resolutions refer to; has no effect when attn_resolutions is empty.
    resolution: int = 256
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Feature-map sizes (in pixels, relative to ``resolution``) that get an AttnBlock after every ResnetBlock.
    attn_resolutions: tuple[int, ...] = ()
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Hydra/OmegaConf hands lists; keep the dataclass hashable and comparable.
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.ch_mult:
            raise ValueError("ch_mult is empty; give one multiplier per resolution level, e.g. (1, 2, 4, 4)")
        for mult in self.ch_mult:
            if (self.ch * mult) % GROUPNORM_GROUPS:
                raise ValueError(
                    f"ch={self.ch} x ch_mult {mult} is not a multiple of {GROUPNORM_GROUPS} (GroupNorm groups); "
                    f"use a ch that is a multiple of {GROUPNORM_GROUPS}"
                )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks={self.num_res_blocks}; use at least 1")
        if self.z_channels < 1 or self.embed_dim < 1:
            raise ValueError(f"z_channels={self.z_channels} and embed_dim={self.embed_dim} must be >= 1")

    @property
    def num_resolutions(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        """Pixels per latent along each side (8 for KL-f8)."""
        return 2 ** (self.num_resolutions - 1)


def tiny_autoencoder_spec() -> AutoencoderSpec:
    """Two levels of 32 and 64 channels, one ResnetBlock each: runs in milliseconds on CPU."""
    return AutoencoderSpec(ch=32, ch_mult=(1, 2), num_res_blocks=1)
