"""Feature networks: a tiny TorchScript I3D stand-in loaded through I3DFeatures, and the CLIP video features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train.evaluation.clip_metrics import ClipScorer
from train.evaluation.features import (
    I3D_FILENAME,
    ClipVideoFeatures,
    I3DFeatures,
    accumulate_features,
    to_i3d_input,
)

# The stand-in network is scripted and saved as the real one was; torch flags TorchScript as deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:FutureWarning")


class TinyI3D(nn.Module):
    """The call signature of the protocol's TorchScript I3D on a 2-layer network."""

    def __init__(self, out: int = 6) -> None:
        super().__init__()
        self.conv = nn.Conv3d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, out)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
        if rescale:
            x = x / 127.5 - 1.0
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 16, 16), mode="trilinear", align_corners=False)
        logits = self.fc(self.conv(x).mean(dim=(2, 3, 4)))
        return logits if return_features else logits.softmax(dim=-1)


@pytest.fixture(scope="module")
def i3d_file(tmp_path_factory):
    torch.manual_seed(0)
    module = TinyI3D().eval()
    path = tmp_path_factory.mktemp("i3d") / I3D_FILENAME
    torch.jit.save(torch.jit.script(module), str(path))
    return module, path


def _videos(n: int = 3, t: int = 5, h: int = 12, w: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, t, 3, h, w), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_layout_is_n_c_t_h_w_in_pixel_range():
    videos = _videos()
    x = to_i3d_input(videos)
    assert x.shape == (3, 3, 5, 12, 20) and x.dtype == torch.float32
    for n, c, t in [(0, 0, 0), (1, 2, 3), (2, 1, 4)]:
        torch.testing.assert_close(x[n, c, t], videos[n, t, c].float(), rtol=0, atol=0)
    assert x.min() >= 0 and x.max() <= 255 and x.max() > 1  # not rescaled: the network does it (rescale=True)


def test_i3d_features_equal_a_direct_call_with_the_protocol_flags(i3d_file):
    module, path = i3d_file
    extractor = I3DFeatures(path, batch_size=2)  # 3 videos: two batches
    videos = _videos()
    features = extractor(videos)
    direct = module(videos.permute(0, 2, 1, 3, 4).float(), rescale=True, resize=True, return_features=True)
    assert features.dtype == torch.float64 and features.shape == (3, 6) and extractor.dim == 6
    torch.testing.assert_close(features, direct.double(), rtol=1e-6, atol=1e-6)
    softmax = module(videos.permute(0, 2, 1, 3, 4).float(), rescale=True, resize=True, return_features=False)
    assert not torch.allclose(features.float(), softmax)  # the features are the logits, not the probabilities


def test_dim_is_probed_before_the_first_call(i3d_file):
    assert I3DFeatures(i3d_file[1]).dim == 6


def test_missing_i3d_file_says_what_to_give(tmp_path):
    with pytest.raises(ValueError, match=f"no I3D file.*{I3D_FILENAME}.*pass its path"):
        I3DFeatures(tmp_path / "nope.pt")


def test_a_network_with_the_wrong_output_is_refused(tmp_path):
    class Bad(nn.Module):
        def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False):
            return x.mean(dim=1)  # (N, T, H, W)

    path = tmp_path / "bad.pt"
    torch.jit.save(torch.jit.script(Bad()), str(path))
    with pytest.raises(ValueError, match="expected \\(N, 400\\)"):
        I3DFeatures(path)(_videos())


@pytest.fixture(scope="module")
def scorer() -> ClipScorer:
    torch.manual_seed(0)
    return ClipScorer.build("tiny", batch_size=4)


@pytest.mark.parametrize("temporal_diff", [False, True])
def test_clip_video_features_are_mean_frame_embeddings(scorer, temporal_diff):
    videos = _videos(n=2, t=3, h=32, w=32)
    extractor = ClipVideoFeatures(scorer, temporal_diff=temporal_diff)
    features = extractor(videos)
    assert features.shape == (2, extractor.dim) and extractor.dim == 32 * (2 if temporal_diff else 1)
    for i in range(2):
        frames = scorer.embed_frames(videos[i]).double()
        torch.testing.assert_close(features[i, :32], frames.mean(dim=0))
        if temporal_diff:
            torch.testing.assert_close(features[i, 32:], (frames[1:] - frames[:-1]).abs().mean(dim=0))


def test_accumulate_features_streams_in_batches_and_checks_frame_counts(i3d_file):
    extractor = I3DFeatures(i3d_file[1])
    videos = _videos(n=5)
    stats = accumulate_features(extractor, iter(videos), batch_size=2)
    all_at_once = extractor(videos)
    assert stats.count == 5
    torch.testing.assert_close(torch.from_numpy(stats.mean()), all_at_once.mean(dim=0))
    assert accumulate_features(extractor, iter(videos), batch_size=2, limit=3).count == 3
    with pytest.raises(ValueError, match="5 frames, others 4"):
        accumulate_features(extractor, iter(videos), num_frames=4)
    with pytest.raises(ValueError, match="empty"):
        accumulate_features(extractor, iter([]))
