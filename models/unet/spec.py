"""Typed specs for the (video) UNet. Field names follow the official sgm configs so configs map one to one.

Presets: ``svd_unet_spec()`` is ``configs/inference/svd.yaml`` (RECIPE 1.1), ``sd21_unet_spec()`` the SD 2.1
768-v UNet (the same class with temporal layers off), ``tiny_unet_spec()`` the test-size network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

MergeStrategy = Literal["fixed", "learned", "learned_with_images"]


@dataclass(frozen=True)
class TemporalSpec:
    """The temporal layers inserted after every spatial layer (RECIPE 1.2 to 1.4)."""

    merge_strategy: MergeStrategy = "learned_with_images"
    merge_factor: float = 0.5
    video_kernel_size: tuple[int, int, int] = (3, 1, 1)
    extra_ff_mix_layer: bool = True
    use_spatial_context: bool = True
    disable_temporal_crossattention: bool = False
    max_time_embed_period: int = 10000

    def __post_init__(self) -> None:
        if self.merge_strategy not in ("fixed", "learned", "learned_with_images"):
            raise ValueError(
                f"merge_strategy={self.merge_strategy!r}; choose one of 'fixed', 'learned', 'learned_with_images'"
            )
        if len(self.video_kernel_size) != 3 or self.video_kernel_size[0] % 2 == 0:
            raise ValueError(f"video_kernel_size={self.video_kernel_size} must be three ints with an odd time size")


@dataclass(frozen=True)
class UNetSpec:
    """Hyperparameters of ``VideoUNet``. ``temporal=None`` builds the plain SD 2.1 image UNet."""

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Downsampling factors (1, 2, 4, ...) at which a transformer follows each ResBlock.
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_head_channels: int = 64
    transformer_depth: int = 1
    context_dim: int = 1024
    # Size of the ``vector`` conditioning fed to ``label_emb`` ("num_classes: sequential"); None disables it.
    adm_in_channels: int | None = 768
    use_linear_in_transformer: bool = True
    dropout: float = 0.0
    temporal: TemporalSpec | None = field(default_factory=TemporalSpec)

    def __post_init__(self) -> None:
        if self.model_channels % 32:
            raise ValueError(f"model_channels={self.model_channels} must be a multiple of 32 (GroupNorm groups)")
        for mult in self.channel_mult:
            if (self.model_channels * mult) % self.num_head_channels:
                raise ValueError(
                    f"channels {self.model_channels * mult} are not divisible by num_head_channels="
                    f"{self.num_head_channels}"
                )
        if self.num_res_blocks < 1:
            raise ValueError("num_res_blocks must be >= 1")

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def is_video(self) -> bool:
        return self.temporal is not None

    def image_only(self) -> UNetSpec:
        """The spatial base of this spec: same network without temporal layers."""
        return replace(self, temporal=None)

    def with_temporal(self, temporal: TemporalSpec | None = None) -> UNetSpec:
        return replace(self, temporal=temporal or TemporalSpec())


def svd_unet_spec() -> UNetSpec:
    """The SVD / SVD-XT image-to-video UNet (RECIPE 1.1)."""
    return UNetSpec()


def sd21_unet_spec() -> UNetSpec:
    """The SD 2.1 (768-v) text-to-image UNet: 4 input channels, no vector conditioning, no temporal layers."""
    return UNetSpec(in_channels=4, adm_in_channels=None, temporal=None)


def tiny_unet_spec(*, temporal: bool = True, in_channels: int = 8, adm_in_channels: int | None = 768) -> UNetSpec:
    """Test-size network: 32 channels, 2 levels. Same code path as the full model."""
    return UNetSpec(
        in_channels=in_channels,
        model_channels=32,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(1, 2),
        num_head_channels=16,
        context_dim=64,
        adm_in_channels=adm_in_channels,
        temporal=TemporalSpec() if temporal else None,
    )
