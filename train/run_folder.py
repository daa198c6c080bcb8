"""The stage folder of one run: writable, never shared by two runs, its metric files in step with its checkpoints.

``<paths.root>/<run_name>/<stage>/`` belongs to one run at a time. ``resume=never`` renames an earlier run's
folder to ``<stage>.prev-<UTC time>`` (one rename, so it stays whole) before anything is written, so its
checkpoints are never resumed, pruned or exported as the new run's. A fresh start (no checkpoint loaded) empties
``metrics.jsonl`` and ``eval_metrics.jsonl``; a resume drops their rows after the checkpoint
(``StageModule.on_load_checkpoint``): the steps of one run only increase. Leftovers of interrupted saves go at
every start. A folder that cannot be created or written is one line naming it and the fix, exit code 2.

Only the launching rank 0 moves or deletes anything: DDP's other processes start later (from ``trainer.fit``)
or, under SLURM, at the same time, and must not touch what rank 0 is using.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from train.checkpointing import RunFolderError, remove_stale_temporaries, resolve_resume

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
EVAL_METRICS_FILE = "eval_metrics.jsonl"
PREV_MARK = ".prev-"
USER_ERROR_EXIT = 2
# What a run writes into its stage folder; any of them means an earlier run was here.
RUN_ENTRIES = ("checkpoints", METRICS_FILE, EVAL_METRICS_FILE, "export", "logs", "samples")
# What a killed ``train.export.write_export`` leaves beside export/.
EXPORT_STALE_RE = re.compile(r"^export(?P<mark>\.tmp-|\.old-)[0-9A-Za-z]+$")
_RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK")


def launch_rank_is_zero() -> bool:
    """Whether this process is rank 0 as launched (torchrun, srun or Lightning's DDP children set these)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in _RANK_VARS)


def ensure_writable(folder: Path, *, root: str, probe: bool = True) -> None:
    """Create ``folder`` and write a probe file in it, or raise ``RunFolderError`` naming it and ``paths.root``.

    ``probe=False`` (ranks other than 0) only creates it: rank 0 may be renaming the folder at that moment.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if probe:
            test_file = folder / f".write-test-{os.getpid()}"
            test_file.write_bytes(b"")
            test_file.unlink()
    except OSError as err:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        where = f"{blocker} is a file" if blocker.is_file() else f"in {blocker}"
        raise RunFolderError(
            f"cannot create or write the stage folder {folder} ({err.strerror or type(err).__name__}: {where}); "
            f"set paths.root to a writable folder (now {root}) or fix the permissions there"
        ) from None


def holds_a_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_ENTRIES)


def hydra_output_dir() -> Path | None:
    """This process's Hydra output folder (``hydra.run.dir``, inside the stage folder), when run by Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else None


def move_previous_run_aside(folder: Path, *, keep: Path | None = None) -> Path | None:
    """Rename ``folder`` to ``<folder>.prev-<UTC time>`` when an earlier run wrote into it; returns the new name.

    ``keep`` (this process's Hydra output folder, which Hydra made inside the stage folder before the run started
    and logs into) is moved back into the new, otherwise empty, stage folder.
    """
    if not holds_a_run(folder):
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = folder.with_name(f"{folder.name}{PREV_MARK}{stamp}")
    n = 0
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}{PREV_MARK}{stamp}-{n}")
    inside = None
    if keep is not None and Path(os.path.abspath(keep)).is_relative_to(os.path.abspath(folder)):
        inside = Path(os.path.abspath(keep)).relative_to(os.path.abspath(folder))
    os.rename(folder, aside)
    folder.mkdir(exist_ok=True)  # another rank may have made it again already
    if inside is not None and (aside / inside).exists():
        (folder / inside).parent.mkdir(parents=True, exist_ok=True)
        os.rename(aside / inside, folder / inside)
    log.warning("resume=never: the earlier run in %s is moved aside to %s; this run starts empty", folder, aside)
    return aside


def trim_jsonl(path: Path, *, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Keep the rows of a jsonl file that ``keep`` accepts; a line cut short by a kill is dropped too."""
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if keep(row):
            rows.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(r + "\n" for r in rows))
    tmp.replace(path)


def start_fresh_metrics(folder: Path) -> None:
    """Empty the metric files of a run that starts from step 0 (rows of a run killed before its first checkpoint)."""
    emptied = [name for name in (METRICS_FILE, EVAL_METRICS_FILE) if (folder / name).exists()]
    for name in emptied:
        (folder / name).write_text("")
    if emptied:
        log.info("no checkpoint to resume from: %s in %s start empty", " and ".join(emptied), folder)


def prepare_stage_folder(folder: Path, *, resume: str, root: str) -> Path | None:
    """Make ``folder`` ready for this run and return the checkpoint to resume from (None: a fresh start)."""
    rank_zero = launch_rank_is_zero()
    ensure_writable(folder, root=root, probe=rank_zero)
    if rank_zero:
        try:
            if resume == "never":
                move_previous_run_aside(folder, keep=hydra_output_dir())
            remove_stale_temporaries(folder / "checkpoints")
            remove_stale_temporaries(folder, pattern=EXPORT_STALE_RE)
        except OSError as err:
            raise RunFolderError(
                f"cannot move or delete in the stage folder {folder} ({err}); fix its permissions or set paths.root "
                "to a writable folder"
            ) from None
    found = resolve_resume(resume, folder / "checkpoints", set_aside=rank_zero)
    if found is None and rank_zero:
        start_fresh_metrics(folder)
    return found


class CheckStageFolder(Callback):
    """Hydra callback (``conf/train.yaml``): check the stage folder before Hydra makes its log folder inside it.

    Hydra creates ``hydra.run.dir`` before the task runs; without this a read-only ``paths.root`` ends in Hydra's
    chained ``mkdir`` traceback instead of one line and exit code 2.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        root = OmegaConf.select(config, "paths.root")
        run_name = OmegaConf.select(config, "paths.run_name")
        stage = OmegaConf.select(config, "stage.name")
        if root is None or run_name is None or stage is None:
            return  # the task reports the missing key
        try:
            ensure_writable(Path(root) / run_name / stage, root=str(root), probe=launch_rank_is_zero())
        except RunFolderError as err:
            print(f"[error] {err}", file=sys.stderr, flush=True)
            sys.exit(USER_ERROR_EXIT)
