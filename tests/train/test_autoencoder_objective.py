"""First-stage objectives on tiny autoencoders: training, determinism, export keys, freezing, perceptual term,
and the exact KL -> temporal decoder start."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.batch import Batch
from models.checkpoints import save_state_dict
from models.vae import (
    AutoencoderKL,
    TemporalAutoencoder,
    is_temporal_decoder_key,
    temporal_from_kl,
    tiny_autoencoder_spec,
)
from train.objectives import AutoencoderObjective, TemporalDecoderObjective, VGGPerceptual
from train.objectives.perceptual import vgg16_feature_keys

B, T, H, W = 2, 3, 32, 32


def _batch(t: int = T, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    # Smooth frames (a coarse grid upsampled) so a tiny autoencoder can fit them within a few steps.
    coarse = torch.rand(B * t, 3, 4, 4, generator=gen)
    frames = torch.nn.functional.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
    frames = (frames * 255).round().to(torch.uint8).reshape(B, t, 3, H, W)
    return {
        "frames": frames,
        "image_only_indicator": torch.full((B, t), float(t == 1)),
        "fps_id": torch.zeros(B, dtype=torch.long),
        "motion_bucket_id": torch.zeros(B, dtype=torch.long),
        "caption": [""] * B,
        "key": [str(i) for i in range(B)],
        "shard": ["s"] * B,
    }


def _kl(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(tiny_autoencoder_spec())


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_state_dict(_random_vgg_sd(torch.Generator().manual_seed(0)), path)
    return path


def _random_vgg_sd(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random torchvision-VGG16-shaped ``features.*`` weights (what a user saves, minus the classifier)."""
    sd = {}
    for key in vgg16_feature_keys():
        idx = int(key.split(".")[1])
        # conv output channels by feature index (torchvision VGG16 config D)
        out = 64 if idx < 4 else 128 if idx < 9 else 256 if idx < 16 else 512
        inp = 3 if idx == 0 else (out if idx not in (5, 10, 17) else out // 2)
        sd[key] = torch.randn((out, inp, 3, 3) if key.endswith("weight") else (out,), generator=gen) * 0.05
    return sd


def _step(objective: torch.nn.Module, batch: Batch, seed: int) -> torch.Tensor:
    loss, _ = objective(batch, generator=torch.Generator().manual_seed(seed))
    return loss


def test_autoencoder_loss_decreases_and_metrics() -> None:
    objective = AutoencoderObjective(_kl())
    opt = torch.optim.AdamW([p for _, p in objective.named_trainable_parameters()], lr=2e-3)
    batch = _batch(t=1)
    losses = []
    for step in range(20):
        loss, metrics = objective(batch, generator=torch.Generator().manual_seed(step))
        assert torch.isfinite(loss) and loss.ndim == 0
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(metrics) == {"rec_loss", "kl", "psnr"}
    assert all(not v.requires_grad and v.ndim == 0 for v in metrics.values())
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses


def test_autoencoder_loss_is_the_documented_formula() -> None:
    objective = AutoencoderObjective(_kl(), loss_type="l2", kl_weight=0.5)
    batch = _batch(t=2)
    loss, metrics = objective(batch, generator=torch.Generator().manual_seed(3))
    x = batch["frames"].flatten(0, 1).float() / 127.5 - 1.0
    ae = objective.first_stage_model
    posterior = ae.encode(x)
    rec = ae.decode(posterior.sample(generator=torch.Generator().manual_seed(3)))
    expected = (rec - x).square().mean() + 0.5 * posterior.kl().mean() / (3 * H * W)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(metrics["kl"], posterior.kl().mean().detach())


def test_deterministic_for_a_generator_seed() -> None:
    batch = _batch(t=1)
    a = _step(AutoencoderObjective(_kl()), batch, seed=5)
    b = _step(AutoencoderObjective(_kl()), batch, seed=5)
    c = _step(AutoencoderObjective(_kl()), batch, seed=6)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)


def test_export_keys_match_the_official_prefix() -> None:
    objective = AutoencoderObjective(_kl())
    expected = {f"first_stage_model.{k}" for k in AutoencoderKL(tiny_autoencoder_spec()).state_dict()}
    assert set(objective.export_module().state_dict()) == expected
    assert set(objective.state_dict()) == expected
    assert {n for n, _ in objective.named_trainable_parameters()} == {
        n for n, _ in objective.export_module().named_parameters()
    }
    assert objective.export_module() is objective.export_module()


@pytest.mark.parametrize("train_decoder", ["all", "temporal"])
def test_temporal_objective_trains_only_what_it_should(train_decoder: str) -> None:
    torch.manual_seed(0)
    ae = TemporalAutoencoder(tiny_autoencoder_spec())
    objective = TemporalDecoderObjective(ae, train_decoder=train_decoder)  # type: ignore[arg-type]
    names = {n for n, _ in objective.named_trainable_parameters()}
    assert names and all(n.startswith("first_stage_model.decoder.") for n in names)
    if train_decoder == "temporal":
        assert all(is_temporal_decoder_key(n) for n in names)
    else:
        assert names == {f"first_stage_model.{n}" for n, _ in ae.decoder.named_parameters(prefix="decoder")}
    before = {n: p.detach().clone() for n, p in ae.named_parameters()}
    opt = torch.optim.AdamW([p for _, p in objective.named_trainable_parameters()], lr=1e-2)
    loss, metrics = objective(_batch(), generator=torch.Generator().manual_seed(0))
    loss.backward()
    opt.step()
    assert set(metrics) == {"rec_loss", "psnr"}
    for name, param in ae.named_parameters():
        trained = f"first_stage_model.{name}" in names
        if not trained:
            assert param.grad is None, name
            assert torch.equal(param, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in ae.named_parameters() if n.startswith("decoder."))
    assert set(objective.export_module().state_dict()) == {f"first_stage_model.{k}" for k in ae.state_dict()}


def test_temporal_objective_on_kl_latents_trains_post_quant_conv_and_freezes_quant_conv() -> None:
    objective = TemporalDecoderObjective(temporal_from_kl(_kl()))
    names = {n for n, _ in objective.named_trainable_parameters()}
    assert "first_stage_model.post_quant_conv.weight" in names
    assert not any(n.startswith(("first_stage_model.encoder.", "first_stage_model.quant_conv.")) for n in names)
    loss, _ = objective(_batch(), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_perceptual_requires_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="vgg_weights"):
        AutoencoderObjective(_kl(), perceptual_weight=1.0)
    with pytest.raises(ValueError, match="vgg_weights"):
        TemporalDecoderObjective(TemporalAutoencoder(tiny_autoencoder_spec()), perceptual_weight=0.1)
    bad = tmp_path / "not_vgg.safetensors"
    save_state_dict({"features.0.weight": torch.zeros(64, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="torchvision.models.vgg16"):
        AutoencoderObjective(_kl(), perceptual_weight=1.0, vgg_weights=bad)
    with pytest.warns(UserWarning, match="vgg_weights is ignored"):
        AutoencoderObjective(_kl(), vgg_weights=bad)


def test_perceptual_with_random_vgg(vgg_file: Path, tmp_path: Path) -> None:
    objective = AutoencoderObjective(_kl(), perceptual_weight=1.0, vgg_weights=vgg_file)
    loss, metrics = objective(_batch(t=1), generator=torch.Generator().manual_seed(0))
    assert float(metrics["perceptual"]) > 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in objective.perceptual.parameters())
    assert objective.first_stage_model.decoder.conv_out.weight.grad is not None
    # The VGG is not trained and not exported.
    assert all(n.startswith("first_stage_model.") for n, _ in objective.named_trainable_parameters())
    assert all(k.startswith("first_stage_model.") for k in objective.export_module().state_dict())

    # A .pth of the same weights (read weights-only) gives the same distance; d(x, x) = 0.
    pth = tmp_path / "vgg16.pth"
    perceptual = VGGPerceptual.from_file(vgg_file)
    torch.save(perceptual.state_dict(), pth)
    x, y = torch.rand(2, 3, H, W) * 2 - 1, torch.rand(2, 3, H, W) * 2 - 1
    torch.testing.assert_close(VGGPerceptual.from_file(pth)(x, y), perceptual(x, y))
    torch.testing.assert_close(perceptual(x, x), torch.zeros(2))


def test_vgg_keys_match_torchvision() -> None:
    vgg = pytest.importorskip("torchvision.models.vgg")
    reference = {f"features.{k}": v for k, v in vgg.make_layers(vgg.cfgs["D"]).state_dict().items()}
    ours = VGGPerceptual(_random_vgg_sd(torch.Generator().manual_seed(0))).state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in reference.items() if k in ours}
    assert all(int(k.split(".")[1]) > 29 for k in reference if k not in ours)


@pytest.mark.parametrize("kernel", [(3, 1, 1), (3, 3, 3)])
@torch.no_grad()
def test_temporal_from_kl_decodes_exactly_like_kl(kernel: tuple[int, int, int]) -> None:
    kl = _kl().eval()
    # Non-trivial quant convs, so a missing post_quant_conv would show.
    kl.post_quant_conv.weight.add_(0.3 * torch.randn_like(kl.post_quant_conv.weight))
    temporal = temporal_from_kl(kl, video_kernel_size=kernel).eval()
    assert temporal.scale_factor == kl.scale_factor
    z = torch.randn(B * T, 4, 16, 16)
    torch.testing.assert_close(temporal.decode(z, num_frames=T), kl.decode(z), rtol=1e-6, atol=1e-6)
    x = torch.rand(2, 3, H, W) * 2 - 1
    torch.testing.assert_close(temporal.encode(x).parameters, kl.encode(x).parameters, rtol=0, atol=0)
    kl_keys = set(kl.state_dict())
    assert kl_keys < set(temporal.state_dict())
    assert all(is_temporal_decoder_key(k) for k in set(temporal.state_dict()) - kl_keys)
    # No shared storage: the KL model stays as it was when the temporal one trains.
    temporal.decoder.conv_in.weight.add_(1.0)
    assert not torch.equal(temporal.decoder.conv_in.weight, kl.decoder.conv_in.weight)


def test_default_temporal_autoencoder_keeps_svd_layout() -> None:
    keys = TemporalAutoencoder(tiny_autoencoder_spec()).state_dict()
    assert not any(k.startswith(("quant_conv.", "post_quant_conv.")) for k in keys)


def test_objective_errors() -> None:
    with pytest.raises(ValueError, match="TemporalDecoderObjective"):
        AutoencoderObjective(TemporalAutoencoder(tiny_autoencoder_spec()))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temporal_from_kl"):
        TemporalDecoderObjective(_kl())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        AutoencoderObjective(_kl(), loss_type="l3")  # type: ignore[arg-type]
    batch = _batch(t=1)
    del batch["frames"]
    with pytest.raises(ValueError, match="frames"):
        AutoencoderObjective(_kl())(batch, generator=torch.Generator())
