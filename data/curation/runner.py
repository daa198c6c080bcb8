"""The curation run: ``annotate`` (per input unit, resumable, splittable into parts) then ``merge`` (filters,
subsets, report).

Layout under ``out``::

    clips/<unit>.tar             curated clips, video2dataset layout (KEY.mp4, KEY.json, KEY.txt)
    clips/<unit>.tar.done        written last: the unit is complete (its json: counts of the unit)
    annotations/<unit>.jsonl     the clips' json records, one per line
    annotations/<unit>.thumbs.npz  middle-frame thumbnails for the report
    annotations/<unit>.stats.json  videos, clips, skips and notes per reason, one line per problem
    annotations.jsonl            (merge) every record, units in name order
    subsets/<name>/keys.txt      (merge) kept clip keys; subsets/<name>/shards/*.tar when write_shards
    report/report.html           (merge) histograms with cut-offs, funnel, contact sheets, skip counts
    summary.json                 (merge) counts and the resolved thresholds of every subset

Every file is written under a temporary name and renamed; a unit counts as done only once its ``.done`` marker
exists, and a re-run redoes exactly the units without one. Since each unit's output is a pure function of its
input and the config, a killed and re-run job ends with the same bytes as an uninterrupted one.

With ``workers > 1`` the units go to spawned pool workers, which must not outlive the curation process: a SIGKILL
of the parent (an OOM kill, ``scancel``, a killed shell) runs no cleanup, and orphaned workers would go on writing
units the re-run also writes. Each worker asks Linux for SIGKILL when its parent dies (``PR_SET_PDEATHSIG``) and,
where that is not available, checks before each unit, each video and the unit's commit that its parent is still
the one that started it. Either way it ends without committing the unit it was on, which the re-run redoes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import io
import json
import logging
import multiprocessing as mp
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.curation.annotate import Annotators, VideoOutcome, clip_members, curate_video
from data.curation.config import CurateConfig
from data.curation.inputs import InputUnit, iter_videos, list_units, parse_part, units_of_part
from data.errors import BadSample
from data.shard_writer import ShardWriter, atomic_write_bytes, is_done, mark_done
from data.sources import write_key_list

log = logging.getLogger("data.curation")


def unit_paths(out: str | os.PathLike[str], unit: InputUnit) -> dict[str, Path]:
    root = Path(out)
    return {
        "shard": root / "clips" / f"{unit.name}.tar",
        "jsonl": root / "annotations" / f"{unit.name}.jsonl",
        "thumbs": root / "annotations" / f"{unit.name}.thumbs.npz",
        "stats": root / "annotations" / f"{unit.name}.stats.json",
    }


def _set_threads(n: int) -> None:
    import cv2
    import torch

    torch.set_num_threads(n)
    cv2.setNumThreads(n)


def annotate_unit(
    unit: InputUnit, annotators: Annotators, out: str, *, check: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Curate every video of one unit and write its outputs; returns the unit's stats.

    ``check`` runs before each video and once more before anything of the unit is renamed into place (a pool
    worker's orphan check, which ends the process).
    """
    paths = unit_paths(out, unit)
    for path in paths.values():  # temp files a killed run left behind for this unit (each unit has one writer)
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    stats: dict[str, Any] = {"unit": unit.name, "url": unit.url, "videos": 0, "clips": 0}
    skips: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    problems: list[dict[str, str]] = []
    thumbs: dict[str, np.ndarray] = {}
    lines: list[str] = []
    with ShardWriter(paths["shard"]) as writer:
        try:
            for raw in iter_videos(unit):
                if check is not None:
                    check()
                stats["videos"] += 1
                outcome: VideoOutcome = curate_video(raw, annotators)
                skips.update(outcome.skips)
                notes.update(outcome.notes)
                problems.extend(outcome.problems)
                for clip in outcome.clips:
                    writer.write(clip.key, clip_members(clip))
                    lines.append(json.dumps(clip.record, sort_keys=True))
                    thumbs[clip.key] = clip.thumb
        except BadSample as e:  # a missing or truncated shard: keep what was read, count the damage
            reason = "unreadable" if e.reason == "missing_shard" else "undecodable"
            skips[reason] += 1
            problems.append({"source": unit.url, "reason": reason, "detail": f"{e.reason}: {e.detail}"})
            log.warning("shard %s: %s (%s)", unit.url, e.reason, e.detail)
        if check is not None:
            check()  # before the shard's rename: an orphan's last video must not complete the unit
        stats["clips"] = writer.count
    buf = io.BytesIO()
    np.savez(buf, **thumbs)  # type: ignore[arg-type]
    atomic_write_bytes(paths["thumbs"], buf.getvalue())
    atomic_write_bytes(paths["jsonl"], "".join(line + "\n" for line in lines).encode("utf-8"))
    stats.update(skips=dict(sorted(skips.items())), notes=dict(sorted(notes.items())), problems=problems)
    atomic_write_bytes(paths["stats"], (json.dumps(stats, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    mark_done(paths["shard"], {k: stats[k] for k in ("unit", "videos", "clips", "skips")})
    return stats


_WORKER: dict[str, Any] = {}


def _worker_init(cfg: CurateConfig) -> None:
    _set_threads(cfg.threads_per_worker)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    _WORKER["annotators"] = Annotators.build(cfg.annotate)
    _WORKER["out"] = cfg.out


def _worker_run(unit: InputUnit) -> dict[str, Any]:
    return annotate_unit(unit, _WORKER["annotators"], _WORKER["out"])


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent exits (Linux); False where prctl is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _exit_if_orphaned() -> None:
    """End this pool worker at once if the process that started it is gone (it was reparented).

    ``os._exit``: no exception unwinds through ``annotate_unit``, so nothing of the unit is renamed into place or
    marked done; its temporary files are removed when the re-run redoes the unit.
    """
    if os.getppid() != _WORKER["parent"]:
        log.error("worker %d: the curation process %d is gone; exiting", os.getpid(), _WORKER["parent"])
        logging.shutdown()
        os._exit(1)


def _pool_worker_init(cfg: CurateConfig, parent: int) -> None:
    _WORKER["parent"] = parent
    _die_with_parent()  # the parent-pid checks below cover platforms without it
    _exit_if_orphaned()  # the parent may have died before the death signal was set
    _worker_init(cfg)


def _pool_worker_run(unit: InputUnit) -> dict[str, Any]:
    _exit_if_orphaned()
    return annotate_unit(unit, _WORKER["annotators"], _WORKER["out"], check=_exit_if_orphaned)


def run_annotate(cfg: CurateConfig, *, progress: bool = True) -> dict[str, Any]:
    """Annotate this part's units that are not done yet; returns counts for the part."""
    units = list_units(list(cfg.input))
    index, count = parse_part(cfg.part)
    mine = units_of_part(units, index, count)
    todo = [u for u in mine if not is_done(unit_paths(cfg.out, u)["shard"])]
    log.info(
        "part %d/%d: %d of %d input units, %d already done", index, count, len(mine), len(units), len(mine) - len(todo)
    )
    results: list[dict[str, Any]] = []
    bar = tqdm(total=len(todo), desc=f"curate part {index}/{count}", unit="unit", disable=not progress)
    if not todo:
        pass  # everything is done: no models to build
    elif cfg.workers == 1 or len(todo) <= 1:
        _worker_init(cfg)
        for unit in todo:
            results.append(_worker_run(unit))
            bar.update()
    else:
        ctx = mp.get_context("spawn")  # fresh interpreters: no inherited OpenMP / decoder state
        workers = min(cfg.workers, len(todo))
        with ctx.Pool(workers, initializer=_pool_worker_init, initargs=(cfg, os.getpid())) as pool:
            for stats in pool.imap_unordered(_pool_worker_run, todo):
                results.append(stats)
                bar.update()
    bar.close()
    clips = sum(r["clips"] for r in results)
    return {"part": f"{index}/{count}", "units": len(mine), "annotated": len(todo), "clips": clips}


def _read_records(cfg: CurateConfig, units: Sequence[InputUnit]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    records: list[dict[str, Any]] = []
    totals: dict[str, Any] = {"videos": 0, "skips": Counter(), "notes": Counter(), "problems": []}
    missing = [u.name for u in units if not is_done(unit_paths(cfg.out, u)["shard"])]
    if missing:
        raise RuntimeError(
            f"{len(missing)} input unit(s) are not annotated yet (first: {missing[0]}); run step=annotate for "
            "every part first (a failed array task is simply re-run)"
        )
    for unit in units:
        paths = unit_paths(cfg.out, unit)
        stats = json.loads(paths["stats"].read_text(encoding="utf-8"))
        totals["videos"] += stats["videos"]
        totals["skips"].update(stats["skips"])
        totals["notes"].update(stats["notes"])
        totals["problems"].extend(stats["problems"])
        for line in paths["jsonl"].read_text(encoding="utf-8").splitlines():
            if line:
                records.append(json.loads(line))
    return records, totals


class Thumbnails(Mapping[str, np.ndarray]):
    """Clip key -> middle-frame thumbnail, read from the units' ``.thumbs.npz`` only when asked for: the report
    shows a few dozen of them, so the rest are never loaded. Only the archives' member lists are read up front;
    each lookup opens its archive, reads that one member and closes it again."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self._where: dict[str, Path] = {}
        for path in paths:
            with np.load(path) as npz:  # an npz is a zip: listing its members reads no array
                self._where.update(dict.fromkeys(npz.files, path))

    def __getitem__(self, key: str) -> np.ndarray:
        with np.load(self._where[key]) as npz:
            return npz[key]

    def __contains__(self, key: object) -> bool:  # Mapping's default would load the array to answer
        return key in self._where

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def run_merge(cfg: CurateConfig) -> dict[str, Any]:
    """Filter the annotated set into every configured subset, write the report and ``summary.json``."""
    from data.curation.filters import SubsetShards, apply_filters, write_subsets
    from data.curation.report import write_report

    units = list_units(list(cfg.input))
    records, totals = _read_records(cfg, units)
    out = Path(cfg.out)
    lines = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(out / "annotations.jsonl", lines.encode())
    summary: dict[str, Any] = {
        "videos": totals["videos"],
        "clips": len(records),
        "skips": dict(sorted(totals["skips"].items())),
        "notes": dict(sorted(totals["notes"].items())),
        "subsets": {},
    }
    results = {}
    to_write: dict[str, SubsetShards] = {}
    for name, subset in sorted(cfg.subsets.items()):
        result = apply_filters(records, subset.filters)
        results[name] = result
        folder = out / "subsets" / name
        write_key_list(folder / "keys.txt", result.kept)
        entry: dict[str, Any] = {"kept": len(result.kept), "thresholds": result.thresholds, "counts": result.counts}
        if subset.write_shards:
            to_write[name] = SubsetShards(set(result.kept), folder / "shards", subset.samples_per_shard)
        summary["subsets"][name] = entry
    if to_write:  # one pass over the clip shards for every subset; a re-run of the merge replaces its own shards
        shards = [str(unit_paths(cfg.out, u)["shard"]) for u in units]
        written = write_subsets(shards, list(to_write.values()), overwrite=True)
        for name, paths in zip(to_write, written, strict=True):
            summary["subsets"][name]["shards"] = [os.path.relpath(p, out) for p in paths]
    if cfg.report.enabled:
        thumbs = Thumbnails(unit_paths(cfg.out, u)["thumbs"] for u in units)
        stage_counts = {"raw videos": totals["videos"], "clips": len(records)}
        for name, result in results.items():
            stage_counts[f"kept ({name})"] = len(result.kept)
        for name, result in results.items():
            write_report(
                out / "report" / name,
                records,
                result,
                cfg.subsets[name].filters,
                skips=summary["skips"],
                notes=summary["notes"],
                stage_counts=stage_counts,
                thumbnails=thumbs,
                title=f"{cfg.report.title}: {name}",
            )
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, sort_keys=True, indent=1) + "\n").encode("utf-8"))
    return summary


def run(cfg: CurateConfig, *, progress: bool = True) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if cfg.step in ("all", "annotate"):
        result["annotate"] = run_annotate(cfg, progress=progress)
    if cfg.step in ("all", "merge"):
        index, count = parse_part(cfg.part) if cfg.step == "all" else (0, 1)
        if count > 1:
            raise ValueError("step=all runs the merge, which needs every part: use step=annotate for parts")
        result["merge"] = run_merge(cfg)
    return result
