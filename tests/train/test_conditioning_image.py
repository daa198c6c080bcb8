"""One image path for sampling: ``scripts/sample.py``, the sample / evaluation callbacks and ``scripts/evaluate.py``
read a conditioning image through ``data.image_decode`` (EXIF orientation applied) with the training resize and
centre crop, and hand the sampler identical tensors for the same file."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import train.sampling
from data.image_decode import decode_image
from data.transforms import resize_and_crop, to_model_range
from models.checkpoints import OfficialCheckpointModel, save_state_dict
from tests.conftest import load_script
from train.callbacks import SampleVideos
from train.config import GenerationSettings
from train.evaluation.clip_metrics import ClipScorer, score_videos
from train.media import read_image
from train.sampling import prepare_image

H, W, T = 16, 24, 2  # the sampled size (landscape); the photo below is portrait once upright


def _upright() -> np.ndarray:
    """A 30 (H) x 20 (W) portrait picture: red top-left quadrant over a blue-green gradient."""
    y, x = np.mgrid[0:30, 0:20]
    pixels = np.stack([np.zeros_like(x), (x * 12) % 256, (y * 8) % 256], axis=-1).astype(np.uint8)
    pixels[:15, :10] = (255, 0, 0)
    return pixels


def _rotated_jpeg(path: Path, orientation: int) -> Path:
    """What a phone writes: the sensor's pixels, and an EXIF Orientation saying how to turn them upright."""
    # Orientation 6: turn 90 degrees clockwise to display, so the stored pixels are the upright picture turned
    # 90 degrees counter-clockwise; 8 is the opposite.
    stored = np.rot90(_upright(), k=1 if orientation == 6 else -1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


@pytest.mark.parametrize("orientation", [6, 8])
def test_read_image_turns_a_rotated_jpeg_upright(tmp_path, orientation):
    path = _rotated_jpeg(tmp_path / "photo.jpg", orientation)
    with Image.open(path) as stored:
        assert stored.size == (30, 20)  # (W, H): stored landscape
        upright = np.asarray(ImageOps.exif_transpose(stored).convert("RGB"))
    image = read_image(path, size=(30, 20))  # the upright size: no resize
    assert image.dtype == torch.uint8 and image.shape == (3, 30, 20)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), upright)
    red = image[:, :15, :10].float().mean(dim=(1, 2))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60  # the red quadrant is top-left again
    assert image[0, 15:, 10:].float().mean() < 60
    # at another size: exactly the training decode (decode_image: cover-resize, centre crop)
    want = decode_image(path.read_bytes(), size=(H, W), crop="center").frame
    assert torch.equal(read_image(path, size=(H, W)), want)
    with pytest.raises(ValueError, match="cannot read the conditioning image"):
        (tmp_path / "bad.jpg").write_bytes(b"not an image")
        read_image(tmp_path / "bad.jpg", size=(H, W))


def test_prepare_image_frames_like_training():
    pixels = torch.randint(0, 256, (3, 30, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    want = to_model_range(resize_and_crop(pixels[None], size=(H, W), crop="center")[0])
    assert torch.equal(prepare_image(pixels, height=H, width=W), want)
    # a [-1, 1] float image is framed the same way (8-bit values round-trip exactly)
    assert torch.equal(prepare_image(to_model_range(pixels), height=H, width=W), want)


def _sample_script() -> ModuleType:
    return load_script("sample")


@pytest.fixture
def recorded(monkeypatch) -> list[torch.Tensor]:
    """The conditioning images the sampler builds its conditions from, one per sample_video call."""
    seen: list[torch.Tensor] = []
    original = train.sampling.conditioner_inputs

    def record(task, **sources):
        seen.append(sources["cond_image"].detach().clone())
        return original(task, **sources)

    monkeypatch.setattr(train.sampling, "conditioner_inputs", record)
    return seen


def test_sample_script_callbacks_and_evaluation_read_the_same_tensor(tmp_path, recorded):
    image = _rotated_jpeg(tmp_path / "photo.jpg", 6)
    torch.manual_seed(0)
    script = _sample_script()
    checkpoint = tmp_path / "svd_tiny.safetensors"
    save_state_dict(OfficialCheckpointModel("svd", sizes=script.tiny_sizes()).state_dict(), checkpoint)
    argv = ["--checkpoint", str(checkpoint), "--variant", "svd", "--tiny", "--image", str(image), "--num-frames",
            str(T), "--height", str(H), "--width", str(W), "--steps", "2", "--out", str(tmp_path / "out")]  # fmt: skip
    assert script.main(argv) == 0
    from_script = recorded.pop()
    want = to_model_range(read_image(image, size=(H, W)))[None]
    assert torch.equal(from_script, want)

    # the sample callback (and EvaluateVideos, which samples through the same PeriodicSampling requests)
    source = script.load_source(script.parse_args(argv))
    objective = SimpleNamespace(
        model=source.model, denoiser=source.denoiser, task=source.task, num_frames=T, height=H, width=W
    )
    callback = SampleVideos(1, images=[str(image)], settings=GenerationSettings(num_steps=2))
    samples = callback._generate(
        SimpleNamespace(global_step=0, is_global_zero=True),
        SimpleNamespace(objective=objective, device=torch.device("cpu")),
    )
    assert samples is not None and len(samples.videos) == 1
    assert torch.equal(recorded.pop(), from_script)
    assert torch.equal(to_model_range(samples.requests[0]["image"])[None], from_script)

    # scripts/evaluate.py's CLIP image similarity: the image read at the generated video's size
    scorer = ClipScorer.build("tiny")
    scored: list[torch.Tensor] = []
    embed = scorer.embed_frames
    scorer.embed_frames = lambda frames: (scored.append(frames.clone()), embed(frames))[1]  # type: ignore[method-assign]
    video = samples.videos[0].permute(0, 3, 1, 2).contiguous()  # (T, H, W, 3) -> (T, 3, H, W)
    scores = score_videos(scorer, [video], image_paths=[image])
    assert len(scores.image_similarity) == 1 and np.isfinite(scores.image_similarity[0])
    assert torch.equal(to_model_range(scored[-1]), from_script)
