"""The orbit renderer (data/demo_orbits.py) and the orbit shards of the demo generator: deterministic views that
change with the azimuth, ``elevation`` from the json carried into the batch, clear errors where it is missing."""

from __future__ import annotations

import json
import tarfile

import numpy as np
import pytest

from data.demo_data import orbit_first_view, sample_rng, write_demo_dataset
from data.demo_orbits import ELEVATION_RANGE, draw_orbit, orbit_azimuths, render_orbit, render_view
from data.errors import BadSample
from data.loader import DatasetConfig, build_stream, collate_samples
from data.micro_cond import elevation_for
from data.sources import SourceSpec
from data.stream import StreamConfig
from data.video_decode import ClipSpec

VIEWS, SIZE = 5, 32


@pytest.fixture(scope="module")
def orbit_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("orbits")
    write_demo_dataset(
        out, seed=3, num_raw_videos=0, num_clips=0, num_images=0, samples_per_shard=2, num_orbits=3,
        num_orbit_test=1, orbit_views=VIEWS, orbit_size=SIZE,
    )  # fmt: skip
    return out


def _object(index: int = 0):
    return draw_orbit(sample_rng(3, "orbit", index))


def test_views_are_deterministic_and_change_with_the_azimuth():
    obj, elevation = _object()
    a = render_orbit(obj, elevation=elevation, num_views=VIEWS, size=SIZE)
    b = render_orbit(_object()[0], elevation=elevation, num_views=VIEWS, size=SIZE)
    assert a.shape == (VIEWS, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)  # same object, same camera: same pixels
    for i in range(1, VIEWS):  # every view differs from the first, clearly
        assert np.abs(a[i].astype(int) - a[0]).mean() > 2.0, i
    again = render_view(obj, azimuth=360.0, elevation=elevation, size=SIZE)
    assert np.array_equal(again, a[0])  # azimuth 360 is azimuth 0
    higher = render_view(obj, azimuth=0.0, elevation=elevation + 20.0, size=SIZE)
    assert np.abs(higher.astype(int) - a[0]).mean() > 2.0  # the elevation is seen
    assert orbit_azimuths(4) == [0.0, 90.0, 180.0, 270.0]


def test_orbit_records_hold_elevation_azimuths_and_the_rendered_views(orbit_shards):
    manifest = json.loads((orbit_shards / "manifest.json").read_text())
    assert manifest["counts"] == {"clips": 0, "images": 0, "orbits/test": 1, "orbits/train": 3, "raw": 0}
    with tarfile.open(orbit_shards / "orbits" / "train" / "00000.tar") as tar:
        meta = json.loads(tar.extractfile("000000000.json").read())
    assert ELEVATION_RANGE[0] <= meta["elevation"] <= ELEVATION_RANGE[1]
    assert meta["azimuths"] == orbit_azimuths(VIEWS) and meta["num_frames"] == VIEWS
    assert meta["elevation"] == _object()[1]
    first, elevation = orbit_first_view(3, 0, split="train", size=SIZE)
    assert elevation == meta["elevation"] and first.shape == (SIZE, SIZE, 3)
    test_first, _ = orbit_first_view(3, 0, split="test", size=SIZE)
    assert not np.array_equal(first, test_first)  # held-out objects are other objects


def _stream(urls: list[str]):
    config = DatasetConfig(
        sources=[SourceSpec(urls)],
        clip=ClipSpec(num_frames=VIEWS, size=(SIZE, SIZE), start="center"),
        stream=StreamConfig(seed=0, shuffle_buffer=0, passes=1),
    )
    return list(build_stream(config, rank=0, world_size=1).iter_worker(0, num_workers=1))


def test_the_batch_carries_the_elevation_and_a_mixed_batch_is_refused(orbit_shards):
    samples = _stream([str(orbit_shards / "orbits" / "train" / "*.tar")])
    assert len(samples) == 3
    batch = collate_samples(samples)
    expected = [_object(i)[1] for i in range(3)]
    assert batch["elevation"].tolist() == pytest.approx(expected) and batch["frames"].shape[1] == VIEWS
    # The decoded first frame is the rendered azimuth-0 view, up to the video codec.
    first, _ = orbit_first_view(3, 0, split="train", size=SIZE)
    assert np.abs(samples[0]["frames"][0].permute(1, 2, 0).numpy().astype(int) - first).mean() < 8
    other = {k: v for k, v in samples[1].items() if k != "elevation"}  # a record whose json has none
    assert "elevation" not in collate_samples([other])
    with pytest.raises(ValueError, match="no 'elevation' in their json"):
        collate_samples([samples[0], other])


def test_a_bad_elevation_is_a_bad_sample():
    assert elevation_for({"elevation": 12}) == 12.0 and elevation_for({}) is None and elevation_for(None) is None
    for bad in ("high", float("nan"), True):
        with pytest.raises(BadSample, match="elevation"):
            elevation_for({"elevation": bad})


def test_without_orbits_the_generator_writes_no_orbit_files(tmp_path):
    manifest = write_demo_dataset(tmp_path, seed=1, num_raw_videos=0, num_clips=1, num_images=1, size=(32, 24))
    assert set(manifest["counts"]) == {"raw", "clips", "images"} and not (tmp_path / "orbits").exists()
