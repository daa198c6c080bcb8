"""Curation pool workers die with their parent: after a SIGKILL of ``python -m data.curation ... workers=2`` no
worker runs on or commits anything more (each has a parent-death signal), and the re-run ends byte-identical to an
uninterrupted run; where there is no such signal, a worker checks its parent before every unit, video and commit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from data.curation import runner
from data.curation.annotate import VideoOutcome
from data.curation.inputs import list_units
from data.curation.runner import run
from data.demo_data import raw_video_sample, write_shards
from tests.data.curation.test_pipeline import ROOT, _cli, curate_config, tree, write_raw

UNITS = 3


def _pool_workers(pid: int) -> list[psutil.Process]:
    """The spawned pool workers under ``pid`` (multiprocessing's resource tracker is not one)."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    workers = []
    for child in children:
        try:
            if "--multiprocessing-fork" in child.cmdline():
                workers.append(child)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return workers


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE  # dead, waiting for its new parent to reap it
    except psutil.NoSuchProcess:
        return False


def _committed(out: Path) -> list[str]:
    """Output files in place (no temporary files, no Hydra logs)."""
    return sorted(
        p.relative_to(out).as_posix()
        for p in out.rglob("*")
        if p.is_file() and not p.name.endswith(".tmp") and "hydra" not in p.relative_to(out).parts
    )


@pytest.mark.processes
def test_workers_die_with_a_killed_parent_and_the_rerun_is_identical(tmp_path: Path) -> None:
    raw = write_raw(tmp_path / "raw", UNITS)
    reference, out = tmp_path / "reference", tmp_path / "out"
    run(curate_config(raw, reference), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _cli(str(raw), out, "step=annotate", "workers=2"), cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    workers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            workers = _pool_workers(proc.pid)
            if len(workers) == 2 and list((out / "clips").rglob(".*.tmp")):  # both up, a unit being written
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) == 2, "the kill should land while both workers annotate"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = _committed(out)
        deadline = time.monotonic() + 10
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [w.pid for w in workers if _running(w)], "pool workers outlived their killed parent"
        assert _committed(out) == at_kill, "an orphaned worker went on committing units"
    finally:
        for worker in workers:  # never leave one behind, whatever failed above
            if _running(worker):
                worker.kill()
    assert len(list((out / "clips").rglob("*.done"))) < UNITS
    run(curate_config(raw, out), progress=False)
    assert tree(out) == tree(reference)


class _Exited(Exception):
    pass


def test_without_the_death_signal_an_orphan_stops_before_its_next_video_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The portable fallback: the parent-pid check before each video and before the commit (curate_video faked)."""
    raw = tmp_path / "raw"
    write_shards(raw, lambda i, k: raw_video_sample(0, i, fps=24.0, size=(64, 48), key=k), count=4, samples_per_shard=2)
    first, second = list_units([str(raw)])
    out = tmp_path / "out"
    curated: list[str] = []

    def fake_curate(video, annotators) -> VideoOutcome:
        curated.append(video.key)
        if len(curated) == 3:  # the parent dies while the second unit's first video is curated
            monkeypatch.setitem(runner._WORKER, "parent", os.getppid() + 1)
        return VideoOutcome()

    def fake_exit(code: int) -> None:
        raise _Exited(code)

    monkeypatch.setattr(runner, "curate_video", fake_curate)
    monkeypatch.setattr(runner.os, "_exit", fake_exit)
    for key, value in {"parent": os.getppid(), "annotators": None, "out": str(out)}.items():
        monkeypatch.setitem(runner._WORKER, key, value)
    runner._pool_worker_run(first)
    assert len(curated) == 2 and _committed(out) == [
        "annotations/raw/00000.jsonl",
        "annotations/raw/00000.stats.json",
        "annotations/raw/00000.thumbs.npz",
        "clips/raw/00000.tar",
        "clips/raw/00000.tar.done",
    ]
    with pytest.raises(_Exited):
        runner._pool_worker_run(second)
    assert len(curated) == 3  # the unit's second video was never started, and nothing of the unit is in place
    assert not [f for f in _committed(out) if "00001" in f]
    with pytest.raises(_Exited):
        runner._pool_worker_run(second)  # nor is a next unit started
    assert len(curated) == 3
