"""Interop with the webdataset library: shards written by ``webdataset.ShardWriter`` in the video2dataset and
img2dataset layouts stream like ours, ours read with a plain ``webdataset.WebDataset``, ``http://`` sources (a
local ``python -m http.server``) and a connection dropped mid-shard, and byte-reproducible atomic shard writing."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from data.demo_data import write_demo_dataset
from data.errors import BadSample
from data.loader import DatasetConfig, build_stream
from data.shard_writer import TAR_MTIME, ShardWriter
from data.sources import DataSources, SourceSpec, expand_urls, iter_shard_records
from data.stream import StreamConfig
from data.stream_state import StreamTracker
from data.video_decode import ClipSpec
from tests.data.stream_fixtures import read_keys

Record = dict[str, Any]


def video2dataset_records(make_mp4: Callable[..., bytes], count: int) -> list[Record]:
    """video2dataset's layout: KEY.mp4, KEY.json (its status fields plus ours), KEY.txt; keys 00000000, ..."""
    out = []
    for i in range(count):
        key = f"{i:08d}"
        meta = {"key": key, "status": "success", "url": f"https://x/{i}.mp4", "caption": f"clip {i}",
                "motion_score": float(i)}  # fmt: skip
        out.append({"__key__": key, "mp4": make_mp4(num_frames=24 + 4 * i), "json": json.dumps(meta).encode(),
                    "txt": f"clip {i}".encode()})  # fmt: skip
    return out


def img2dataset_records(count: int) -> list[Record]:
    """img2dataset's layout: KEY.jpg, KEY.json, KEY.txt."""
    out = []
    for i in range(count):
        key = f"{i:08d}"
        buf = io.BytesIO()
        pixels = np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        meta = {"key": key, "status": "success", "width": 64, "height": 48, "caption": f"image {i}"}
        out.append({"__key__": key, "jpg": buf.getvalue(), "json": json.dumps(meta).encode(),
                    "txt": f"image {i}".encode()})  # fmt: skip
    return out


def write_with_webdataset(root: Path, records: list[Record], per_shard: int) -> list[str]:
    root.mkdir(parents=True)
    with wds.ShardWriter(str(root / "%06d.tar"), maxcount=per_shard, verbose=0) as sink:
        for record in records:
            sink.write(record)
    return sorted(str(p) for p in root.glob("*.tar"))


def write_with_ours(root: Path, records: list[Record], per_shard: int) -> list[str]:
    paths = []
    for shard, first in enumerate(range(0, len(records), per_shard)):
        with ShardWriter(root / f"{shard:06d}.tar") as writer:
            for record in records[first : first + per_shard]:
                writer.write(record["__key__"], {k: v for k, v in record.items() if not k.startswith("__")})
        paths.append(str(writer.path))
    return paths


def stream_samples(urls: list[str], *, passes: int = 1) -> list[dict[str, Any]]:
    config = DatasetConfig(
        sources=[SourceSpec(urls=urls)],
        clip=ClipSpec(num_frames=4, target_fps=12.0, size=(32, 48), start="random", crop="random"),
        stream=StreamConfig(seed=5, shuffle_buffer=3, passes=passes),
    )
    return list(build_stream(config, rank=0, world_size=1))


def assert_same_samples(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert [s["key"] for s in a] == [s["key"] for s in b] and a
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["frames"], y["frames"])
        assert (x["caption"], x["fps_id"], x["motion_bucket_id"]) == (y["caption"], y["fps_id"], y["motion_bucket_id"])
        assert x["_stream"]["stats"] == y["_stream"]["stats"]


@pytest.mark.parametrize("layout", ["video2dataset", "img2dataset"])
def test_webdataset_written_shards_stream_like_ours(
    tmp_path: Path, make_mp4: Callable[..., bytes], layout: str
) -> None:
    records = video2dataset_records(make_mp4, 5) if layout == "video2dataset" else img2dataset_records(5)
    theirs = write_with_webdataset(tmp_path / "wds", records, per_shard=2)
    ours = write_with_ours(tmp_path / "ours", records, per_shard=2)
    assert [Path(p).name for p in theirs] == [Path(p).name for p in ours] == [f"{i:06d}.tar" for i in range(3)]
    with tarfile.open(theirs[0]) as tar:  # webdataset's own member names: KEY.EXT in sorted extension order
        assert tar.getnames() == [f"00000000.{e}" for e in sorted(records[0]) if e != "__key__"] + [
            f"00000001.{e}" for e in sorted(records[1]) if e != "__key__"
        ]
    for url_theirs, url_ours in zip(theirs, ours, strict=True):
        got_theirs, got_ours = list(iter_shard_records(url_theirs)), list(iter_shard_records(url_ours))
        strip = [{k: v for k, v in r.items() if k != "__url__"} for r in got_theirs]
        assert strip == [{k: v for k, v in r.items() if k != "__url__"} for r in got_ours]
    samples = stream_samples(theirs)
    assert sorted(s["key"] for s in samples) == [r["__key__"] for r in records]
    assert_same_samples(samples, stream_samples(ours))


def test_our_shards_read_by_plain_webdataset(tmp_path: Path, make_mp4: Callable[..., bytes]) -> None:
    ours = write_with_ours(tmp_path / "ours", video2dataset_records(make_mp4, 3), per_shard=2)
    write_demo_dataset(tmp_path / "demo", seed=1, num_raw_videos=0, num_clips=2, num_images=3, samples_per_shard=2,
                       size=(48, 32), fps=8.0)  # fmt: skip
    urls = ours + expand_urls(str(tmp_path / "demo" / "*" / "*.tar"))
    pipeline = wds.WebDataset(urls, shardshuffle=False, empty_check=True)
    got = [{k: v for k, v in r.items() if k != "__local_path__"} for r in pipeline]
    expected = [r for url in urls for r in iter_shard_records(url)]
    assert got == expected and len(expected) == 3 + 2 + 3
    assert {e for r in expected for e in r} >= {"__key__", "__url__", "mp4", "jpg", "png", "json", "txt"}


def test_same_records_give_the_same_bytes_and_writes_are_atomic(tmp_path: Path) -> None:
    records = img2dataset_records(3)
    first = write_with_ours(tmp_path / "a", records, per_shard=3)
    second = write_with_ours(tmp_path / "b", records, per_shard=3)
    assert Path(first[0]).read_bytes() == Path(second[0]).read_bytes()
    with tarfile.open(first[0]) as tar:
        assert {(m.mtime, m.uname, m.gname, m.uid, m.gid, m.mode) for m in tar.getmembers()} == {
            (TAR_MTIME, "", "", 0, 0, 0o644)
        }
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["000000.tar"]  # no temporary file left
    with pytest.raises(RuntimeError, match="killed"), ShardWriter(tmp_path / "c" / "x.tar") as writer:
        writer.write("k", {"json": b"{}"})
        raise RuntimeError("killed")
    assert list((tmp_path / "c").iterdir()) == []  # neither a partial shard nor its temporary file
    with pytest.raises(ValueError, match="starting with '_'"), ShardWriter(tmp_path / "d.tar") as writer:
        writer.write("k", {"_meta": b"x"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, "python -m http.server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"http.server did not listen on {port}")


@pytest.fixture
def http_server(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    """(folder, base url): ``python -m http.server`` serving a folder on 127.0.0.1, stopped by a finalizer."""
    root, port = tmp_path / "served", _free_port()
    root.mkdir()
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        proc.terminate()
        proc.wait(timeout=10)

    request.addfinalizer(stop)
    _wait_for_port(port, proc)
    return root, f"http://127.0.0.1:{port}"


def test_http_source_streams_like_local(http_server: tuple[Path, str], make_mp4: Callable[..., bytes]) -> None:
    root, base = http_server
    local = write_with_ours(root, video2dataset_records(make_mp4, 4), per_shard=2)
    remote = expand_urls(f"{base}/{{000000..000001}}.tar")
    assert remote == [f"{base}/000000.tar", f"{base}/000001.tar"]
    assert DataSources(remote).sources[0].missing == ()  # remote shards are not checked ahead
    assert [r["__key__"] for u in remote for r in iter_shard_records(u)] == [f"{i:08d}" for i in range(4)]
    assert_same_samples(stream_samples(remote), stream_samples(local))
    with pytest.raises(BadSample) as info:  # curl -f: an HTTP 404 fails before any record
        list(iter_shard_records(f"{base}/nope.tar"))
    assert info.value.reason == "missing_shard"


class HalfServer:
    """An HTTP server thread that announces the whole shard, sends its first ``cut`` bytes and drops the
    connection."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut = data, cut
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/000000.tar"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            with conn:
                conn.recv(65536)  # the request
                head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(self.data)}\r\nContent-Type: application/x-tar\r\n\r\n"
                conn.sendall(head.encode() + self.data[: self.cut])


@pytest.fixture
def half_server(tmp_path: Path, make_mp4: Callable[..., bytes]) -> Iterator[tuple[HalfServer, Path]]:
    (shard,) = write_with_ours(tmp_path / "full", video2dataset_records(make_mp4, 4), per_shard=4)
    data = Path(shard).read_bytes()
    server = HalfServer(data, len(data) // 2)
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    yield server, cut
    server.sock.close()


def test_dropped_connection_is_a_counted_truncated_shard(half_server: tuple[HalfServer, Path], tmp_path: Path,
                                                         make_mp4: Callable[..., bytes]) -> None:  # fmt: skip
    server, cut = half_server
    keys, reason = read_keys(server.url)
    assert reason == "truncated_shard" and 0 < len(keys) < 4
    assert (keys, reason) == read_keys(str(cut))  # the same records as the same bytes cut short on disk
    good = write_with_ours(tmp_path / "good", video2dataset_records(make_mp4, 2)[1:], per_shard=1)
    tracker = StreamTracker()
    samples = stream_samples([server.url, *good], passes=2)  # the first pass's skips travel on the second's samples
    tracker.update(samples)
    assert sorted({s["key"] for s in samples}) == sorted({*keys, "00000001"})
    assert tracker.stats().nonzero_skips() == {"truncated_shard": 2}
