"""Start a temporal decoder from an image KL autoencoder so that it decodes exactly like it.

Video LDM [VLDM 3.1.1] and SVD finetune the temporal layers of the decoder on top of a trained image
autoencoder. ``temporal_from_kl`` builds that starting point: a ``TemporalAutoencoder`` with quant convs (SD
2.1's latent space keeps its ``quant_conv`` / ``post_quant_conv``) holding every weight of the KL model, with
the temporal layers set to the identity:

* ``VideoResnetBlock``: ``out = alpha * time_stack(x) + (1 - alpha) * x`` with ``alpha = sigmoid(mix_factor)``.
  ``time_stack`` is a 3-D ResBlock ``x + out_layers(in_layers(x))`` whose last conv (``out_layers.3``) is zero,
  so ``time_stack(x) = x`` and ``out = x`` for ANY ``mix_factor``; it stays 0 (alpha 0.5, sgm's init).
  In floats ``0.5 * x + 0.5 * x == x`` exactly.
* ``AE3DConv.time_mix_conv``: a Dirac kernel, ``w[o, c, kt, kh, kw] = [o == c]`` at the centre tap
  ``(kt//2, kh//2, kw//2)`` and 0 elsewhere, bias 0, so the same-padded Conv3d returns its input.

The decoder is then ``VideoDecoder(z) == Decoder(z)`` frame by frame, and training moves it away from there.

``fold_post_quant_conv=True`` builds the layout diffusers' ``AutoencoderKLTemporalDecoder`` can hold (it has a
``quant_conv`` but no ``post_quant_conv``): the 1x1 ``post_quant_conv`` (``y = P z + p``) is folded into the 3x3
zero-padded ``decoder.conv_in`` (``W'_tap = W_tap P``, ``b' = b + sum_taps W_tap p``). That is exact wherever the
3x3 window lies inside the latent; on the outermost latent ring the padded taps saw ``0`` where the fold adds their
share of ``p``, so there the start differs from the KL decoder by ``sum_padded_taps W_tap p`` (zero when ``p = 0``).
No 1x1/3x3 conv pair reproduces the padding of ``P z + p`` exactly; the ``temporal_decoder`` stage trains the whole
decoder, ``conv_in`` included, from this start.
"""

from __future__ import annotations

import torch
from torch import nn

from .autoencoder import AutoencoderKL, TemporalAutoencoder
from .temporal_decoder import AE3DConv, VideoDecoder, VideoKernelSize, VideoResnetBlock

_TEMPORAL_KEY_PARTS = (".time_stack.", ".time_mix_conv.")


def is_temporal_decoder_key(key: str) -> bool:
    """True for the parameters the video decoder adds to the image decoder (``time_stack``, ``mix_factor``,
    ``time_mix_conv``)."""
    return any(part in key for part in _TEMPORAL_KEY_PARTS) or key.endswith("mix_factor")


@torch.no_grad()
def init_temporal_identity_(decoder: VideoDecoder) -> None:
    """Make every temporal layer of ``decoder`` the identity in place (see the module docstring)."""
    for module in decoder.modules():
        if isinstance(module, VideoResnetBlock):
            last = module.time_stack.out_layers[-1]
            assert isinstance(last, nn.Conv3d), "time_stack.out_layers must end with its Conv3d"
            last.weight.zero_()
            last.bias.zero_()
            module.mix_factor.zero_()
        elif isinstance(module, AE3DConv):
            nn.init.dirac_(module.time_mix_conv.weight)
            module.time_mix_conv.bias.zero_()


@torch.no_grad()
def folded_post_quant_conv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (autoencoder keys) with ``post_quant_conv`` folded into ``decoder.conv_in`` (module docstring)."""
    p_w, p_b = state.pop("post_quant_conv.weight")[:, :, 0, 0], state.pop("post_quant_conv.bias")
    w, b = state["decoder.conv_in.weight"], state["decoder.conv_in.bias"]
    state["decoder.conv_in.weight"] = torch.einsum("ochw,ci->oihw", w.double(), p_w.double()).to(w.dtype)
    state["decoder.conv_in.bias"] = (b.double() + torch.einsum("ochw,c->o", w.double(), p_b.double())).to(b.dtype)
    return state


def temporal_from_kl(
    kl: AutoencoderKL, *, video_kernel_size: VideoKernelSize = (3, 1, 1), fold_post_quant_conv: bool = False
) -> TemporalAutoencoder:
    """A ``TemporalAutoencoder(quant_convs=True)`` with all of ``kl``'s weights and identity temporal layers.

    ``decode(z, num_frames=T)`` of the result equals ``kl.decode(z)`` for every clip length, and ``encode`` is
    ``kl.encode``. The result lives on ``kl``'s device and dtype and shares no storage with it.
    ``fold_post_quant_conv=True``: no ``post_quant_conv`` (diffusers' layout); the decode then equals ``kl``'s
    except on the outermost latent ring (module docstring); ``encode`` is still ``kl.encode`` exactly.
    """
    if not isinstance(kl, AutoencoderKL):
        raise ValueError(f"temporal_from_kl needs an AutoencoderKL; got {type(kl).__name__}")
    reference = next(kl.parameters())
    model = TemporalAutoencoder(
        kl.spec,
        video_kernel_size=video_kernel_size,
        scale_factor=kl.scale_factor,
        quant_convs=True,
        post_quant_conv=not fold_post_quant_conv,
    ).to(device=reference.device, dtype=reference.dtype)
    state = {k: v.clone() for k, v in kl.state_dict().items()}
    missing, unexpected = model.load_state_dict(
        folded_post_quant_conv(state) if fold_post_quant_conv else state, strict=False
    )
    assert not unexpected, f"KL keys without a place in the temporal autoencoder: {unexpected[:5]}"
    assert all(is_temporal_decoder_key(k) for k in missing), f"non-temporal keys left at init: {missing[:5]}"
    init_temporal_identity_(model.decoder)
    return model
