"""Source specs: brace expansion, globs, list files, pipe: commands, validation, and reading shard records."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from data.shard_writer import output_names
from data.sources import DataSources, SourceSpec, expand_urls, iter_shard_records
from tests.data.stream_fixtures import read_keys as _read
from tests.data.stream_fixtures import sample_members, write_shards, write_tar


def test_brace_expansion_keeps_order(tmp_path: Path) -> None:
    urls = expand_urls(f"{tmp_path}/{{000000..000002}}.tar")
    assert urls == [f"{tmp_path}/00000{i}.tar" for i in range(3)]
    assert expand_urls(["a/{1,2}.tar", "file:b.tar"], base_dir="/d") == ["/d/a/1.tar", "/d/a/2.tar", "/d/b.tar"]


def test_glob_is_sorted_and_unmatched_glob_is_kept(tmp_path: Path) -> None:
    write_shards(tmp_path, num_shards=3, per_shard=1)
    assert expand_urls(str(tmp_path / "*.tar")) == [str(tmp_path / f"s{i:03d}.tar") for i in range(3)]
    assert expand_urls(str(tmp_path / "none*.tar")) == [str(tmp_path / "none*.tar")]


def test_list_file_with_comments_and_relative_paths(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards", num_shards=3, per_shard=1)
    listing = tmp_path / "list.txt"
    listing.write_text("# training shards\nshards/s{000..001}.tar  # first two\n\n/abs/x.tar\npipe:cat y.tar\n")
    urls = expand_urls(f"@{listing}")
    assert urls == [
        str(tmp_path / "shards/s000.tar"),
        str(tmp_path / "shards/s001.tar"),
        "/abs/x.tar",
        "pipe:cat y.tar",
    ]
    with pytest.raises(ValueError, match="list file"):
        expand_urls(f"@{tmp_path}/missing.txt")


def test_pipe_braces_expand() -> None:
    assert expand_urls("pipe:aws s3 cp s3://b/{0..1}.tar -") == [
        "pipe:aws s3 cp s3://b/0.tar -",
        "pipe:aws s3 cp s3://b/1.tar -",
    ]


def test_empty_sources_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No data sources"):
        DataSources([])
    with pytest.raises(ValueError, match="expands to no shards"):
        DataSources([SourceSpec([])])
    with pytest.raises(ValueError, match="weight"):
        DataSources([SourceSpec(str(tmp_path / "x.tar"), weight=0.0)])
    with pytest.raises(ValueError, match="Mixed"):
        DataSources([SourceSpec(str(tmp_path / "x.tar")), str(tmp_path / "y.tar")])


def test_all_missing_is_an_error_some_missing_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="All 2 shards"):
        DataSources([f"{tmp_path}/s{{000..001}}.tar"])
    write_shards(tmp_path, num_shards=1, per_shard=1)
    with caplog.at_level(logging.WARNING, logger="data.sources"):
        src = DataSources(
            [SourceSpec(f"{tmp_path}/s{{000..001}}.tar"), SourceSpec("pipe:cat nothing", weight=2, name="remote")]
        )
    assert src.sources[0].missing == (str(tmp_path / "s001.tar"),)
    assert src.sources[1].name == "remote" and src.weights == [1.0, 2.0]
    assert "1 of 2 shards missing" in caplog.text
    assert len(DataSources([str(tmp_path / "s000.tar"), f"pipe:cat {tmp_path}/s000.tar"])) == 1
    from_yaml = DataSources([{"urls": [str(tmp_path / "s000.tar")], "weight": 3}])
    assert from_yaml.weights == [3.0] and from_yaml.sources[0].shards == (str(tmp_path / "s000.tar"),)


def test_records_group_members_by_key(tmp_path: Path) -> None:
    members = [*sample_members("a"), ("dir/b.c.JSON", b"{}"), ("dir/b.c.mp4", b"v"), ("__meta__.json", b"{}")]
    shard = write_tar(tmp_path / "x.tar", members)
    records = list(iter_shard_records(str(shard)))
    assert [r["__key__"] for r in records] == ["a", "dir/b"]
    assert set(records[0]) == {"__key__", "__url__", "json", "mp4", "txt"}
    assert records[1]["c.json"] == b"{}" and records[1]["__url__"] == str(shard)


def test_pipe_reads_stdout_and_failure_is_missing_shard(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, num_shards=1, per_shard=3)
    assert _read(f"pipe:cat {shard}") == (["s000_0000", "s000_0001", "s000_0002"], None)
    assert _read(f"pipe:cat {tmp_path}/nope.tar") == ([], "missing_shard")
    assert _read(f"{tmp_path}/nope.tar") == ([], "missing_shard")


@pytest.mark.parametrize("cut_records", [0.5, 1.3, 2.0])
def test_truncated_tar_keeps_complete_records(tmp_path: Path, cut_records: float) -> None:
    (shard,) = write_shards(tmp_path, num_shards=1, per_shard=4)
    data = shard.read_bytes()
    record_bytes = 3 * 1024  # three members, each one header block and one data block
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(cut_records * record_bytes)])
    got, reason = _read(str(cut))
    assert reason == "truncated_shard"
    # the record at the damage is dropped (it may be incomplete); the ones before it survive
    assert got == [f"s000_{j:04d}" for j in range(math.ceil(cut_records) - 1)]
    assert _read(f"pipe:head -c {int(1.5 * record_bytes)} {shard}")[1] == "truncated_shard"


def test_remote_schemes_expand_braces_and_unknown_ones_fail() -> None:
    assert expand_urls(["https://h/x/{0..1}.tar", "a:b/{1,2}.tar"], base_dir="/d") == [
        "https://h/x/0.tar",
        "https://h/x/1.tar",
        "/d/a:b/1.tar",  # a colon in a local name is no scheme
        "/d/a:b/2.tar",
    ]
    assert DataSources(["http://h/{0..2}.tar"]).sources[0].shards == tuple(f"http://h/{i}.tar" for i in range(3))
    with pytest.raises(ValueError, match="no webdataset opener for s3://.*pipe:aws s3 cp s3://b/0.tar -"):
        expand_urls("s3://b/0.tar")
    assert output_names(["http://h/a/000.tar", "pipe:curl -s http://h/b/001.tar"]) == ["000.tar", "001.tar"]


def test_command_failing_after_a_whole_tar_and_repeated_members(tmp_path: Path) -> None:
    (shard,) = write_shards(tmp_path, num_shards=1, per_shard=3)
    # the exit status is checked at the end: the records before the last one survive, the last one counts as damaged
    assert _read(f"pipe:cat {shard}; exit 3") == (["s000_0000", "s000_0001"], "truncated_shard")
    dup = write_tar(tmp_path / "dup.tar", [("a.json", b"1"), ("a.json", b"2"), ("b.json", b"3")])
    assert [r["json"] for r in iter_shard_records(str(dup))] == [b"1", b"3"]  # webdataset's grouping keeps the first
