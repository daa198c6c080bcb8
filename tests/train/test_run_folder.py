"""Faults around the stage folder: a reused folder, kills before the first checkpoint and during saves, a corrupt
newest checkpoint, a full disk, a folder that cannot be created. Each reproduces what issue 13 saw."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import train.export
from train.checkpointing import (
    AtomicCheckpointIO,
    DiskFullError,
    RunFolderError,
    list_checkpoints,
    prune_checkpoints,
    remove_stale_temporaries,
    resolve_resume,
)
from train.export import CONFIG_FILE, META_FILE, MODEL_FILE, read_export_meta, write_export
from train.module import read_metrics
from train.run import init_source, run
from train.run_folder import CheckStageFolder, ensure_writable, move_previous_run_aside

from .conftest import ROOT, compose_train, train_subprocess

SCRATCH = ("stage.init.from_stage=null", "stage.init.keep=[unet,first_stage,conditioner]", "data.num_workers=0")


def _stage(tmp_path: Path) -> Path:
    return tmp_path / "runs" / "demo" / "video_pretrain"


def _overrides(stage_overrides, *extra: str) -> list[str]:
    return stage_overrides("video_pretrain", *SCRATCH, *extra)


def _ckpt(folder: Path, step: int, **extra: object) -> Path:
    path = folder / f"step_{step:09d}.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": step, "w": torch.full((4,), float(step)), **extra}, path)
    return path


# ----- 1. resume=never in a used folder ------------------------------------------------------------------------


def test_resume_never_moves_the_earlier_run_aside_and_exports_its_own_weights(stage_overrides, tmp_path, caplog):
    stage = _stage(tmp_path)
    every = ("trainer.checkpoint_every_n_steps=1", "trainer.keep_checkpoints=2")
    assert run(compose_train(_overrides(stage_overrides, "stage.max_steps=4", *every))) == 0
    first_id = json.loads((stage / "export" / META_FILE).read_text())["run_id"]

    with caplog.at_level(logging.WARNING, logger="train.run_folder"):
        overrides = _overrides(stage_overrides, "stage.max_steps=2", "stage.optim.lr=0.00042", "resume=never", *every)
        assert run(compose_train(overrides)) == 0
    (prev,) = stage.parent.glob("video_pretrain.prev-*")
    assert f"moved aside to {prev}" in caplog.text
    assert [p.name for p in list_checkpoints(prev / "checkpoints")] == ["step_000000003.ckpt", "step_000000004.ckpt"]
    assert [r["batch"] for r in read_metrics(prev / "metrics.jsonl")] == [0, 1, 2, 3]
    # Before the fix the old run's step_3/4 outranked the new step_1/2, which pruning deleted as they were written.
    saved = list_checkpoints(stage / "checkpoints")
    assert [p.name for p in saved] == ["step_000000001.ckpt", "step_000000002.ckpt"]
    assert [r["step"] for r in read_metrics(stage / "metrics.jsonl")] == [1, 2]
    run_id = torch.load(saved[-1], weights_only=True)["run_id"]
    config, meta = read_export_meta(stage / "export")  # checks the run id of the three files
    assert meta["run_id"] == run_id != first_id and meta["step"] == 2
    assert config.stage.optim.lr == pytest.approx(0.00042)
    assert resolve_resume("auto", stage / "checkpoints") == saved[-1]  # a later resume=auto continues the new run


def test_pruning_never_deletes_the_checkpoint_just_saved(tmp_path):
    old = [_ckpt(tmp_path, step) for step in (28, 29, 30)]  # an earlier run's, with higher step numbers
    new = _ckpt(tmp_path, 1)
    removed = prune_checkpoints(tmp_path, keep=3, newest=new)
    assert removed == [old[0]] and list_checkpoints(tmp_path) == [new, *old[1:]]
    assert prune_checkpoints(tmp_path, keep=1, newest=new) == old[1:] and list_checkpoints(tmp_path) == [new]


def _export(folder: Path, run_id: str, lr: float) -> Path:
    config = compose_train(["stage=autoencoder", "experiment=demo", f"stage.optim.lr={lr}"])
    state = {"first_stage_model.w": torch.full((3,), lr)}
    return write_export(folder, state, config=config, meta={"stage": "autoencoder", "run_id": run_id})


def test_an_export_mixing_two_runs_is_refused_naming_both_files(tmp_path):
    good = _export(tmp_path / "a" / "autoencoder" / "export", "a" * 32, 1e-4)
    other = _export(tmp_path / "b" / "autoencoder" / "export", "b" * 32, 3e-4)
    config, meta = read_export_meta(good)
    assert meta["run_id"] == "a" * 32 and (good / CONFIG_FILE).read_text().startswith(f"# run_id: {'a' * 32}")

    shutil.copy(other / CONFIG_FILE, good / CONFIG_FILE)  # the new run's config over the old run's weights
    both = rf"{good / MODEL_FILE} \(run a{{32}}\) and {good / CONFIG_FILE} \(run b{{32}}\)"
    with pytest.raises(ValueError, match=both):
        read_export_meta(good)
    cfg = SimpleNamespace(paths=SimpleNamespace(root=str(tmp_path), run_name="a"))
    with pytest.raises(ValueError, match=both):  # the hand-off to the next stage checks too
        init_source(cfg, from_stage="autoencoder", path=None, what="stage.init.from_stage")
    with pytest.raises(ValueError, match=both):
        init_source(cfg, from_stage=None, path=str(good), what="stage.init.from_stage")


def test_move_aside_keeps_the_current_hydra_folder_in_the_new_stage_folder(tmp_path):
    stage = tmp_path / "video_pretrain"
    (stage / "checkpoints").mkdir(parents=True)
    (stage / "hydra" / "old").mkdir(parents=True)
    current = stage / "hydra" / "now"
    current.mkdir()
    (current / "train.log").write_text("this run\n")
    aside = move_previous_run_aside(stage, keep=current)
    assert aside is not None and (aside / "checkpoints").is_dir() and (aside / "hydra" / "old").is_dir()
    assert sorted(p.name for p in stage.rglob("*")) == ["hydra", "now", "train.log"]
    assert move_previous_run_aside(stage, keep=current) is None  # nothing of a run left to move


# ----- 2. metrics of a run killed before its first checkpoint -------------------------------------------------


def test_a_run_killed_before_its_first_checkpoint_restarts_its_metrics(stage_overrides, tmp_path):
    stage = _stage(tmp_path)
    no_ckpt = "trainer.checkpoint_every_n_steps=100"
    proc = train_subprocess(_overrides(stage_overrides, "stage.max_steps=50", no_ckpt))
    deadline = time.monotonic() + 300
    while not ((stage / "metrics.jsonl").exists() and len(read_metrics(stage / "metrics.jsonl")) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list_checkpoints(stage / "checkpoints")
    (stage / "eval_metrics.jsonl").write_text('{"step": 1, "eval/clipsim": 0.1}\n')

    assert run(compose_train(_overrides(stage_overrides, "stage.max_steps=3", no_ckpt))) == 0  # resume=auto
    rows = read_metrics(stage / "metrics.jsonl")
    assert [r["batch"] for r in rows] == [0, 1, 2] and [r["step"] for r in rows] == [1, 2, 3]  # was 0, 1, 0, 1, 2
    assert (stage / "eval_metrics.jsonl").read_text() == ""


# ----- 3 and 7a. leftovers of killed saves, a corrupt newest checkpoint ----------------------------------------


def test_leftovers_of_killed_saves_are_removed_and_complete_checkpoints_kept(tmp_path, caplog):
    keep = [_ckpt(tmp_path, 2), _ckpt(tmp_path, 6)]
    (tmp_path / "step_000000004.ckpt.tmp-4242").write_bytes(b"half a checkpoint")
    (tmp_path / "nonfinite_step_000000005.ckpt.tmp-77").write_bytes(b"half")
    (tmp_path / "step_000000006.ckpt.old-1a2b3c4d").mkdir()  # DeepSpeed folder moved aside; step_6 exists
    ds_tmp = tmp_path / "step_000000008.ckpt.tmp-deadbeef"  # a DeepSpeed save killed mid-way
    (ds_tmp / "checkpoint").mkdir(parents=True)
    (ds_tmp / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"x")
    only_copy = tmp_path / "step_000000010.ckpt.old-99aa88bb"  # killed between replace_path's two renames
    only_copy.mkdir()
    unrelated = [tmp_path / "notes.txt", tmp_path / "step_000000003.ckpt.corrupt", tmp_path / "step_1.ckpt.tmp-x.y"]
    for path in unrelated:
        path.write_text("mine")
    with caplog.at_level(logging.WARNING, logger="train.checkpointing"):
        removed = remove_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [
        "nonfinite_step_000000005.ckpt.tmp-77",
        "step_000000004.ckpt.tmp-4242",
        "step_000000006.ckpt.old-1a2b3c4d",
        "step_000000008.ckpt.tmp-deadbeef",
    ]
    assert "removed 4 leftovers of interrupted saves: " in caplog.text
    assert all(p.exists() for p in keep + unrelated) and (tmp_path / "step_000000010.ckpt").is_dir()
    assert not only_copy.exists()


def test_a_truncated_newest_checkpoint_is_kept_aside_and_the_previous_one_resumed(tmp_path, caplog):
    older, newest = _ckpt(tmp_path, 2), _ckpt(tmp_path, 4)
    size = newest.stat().st_size
    with open(newest, "r+b") as f:
        f.truncate(size // 2)
    with caplog.at_level(logging.WARNING, logger="train.checkpointing"):
        assert resolve_resume("auto", tmp_path) == older
    assert f"checkpoint {newest} does not load" in caplog.text
    corrupt = tmp_path / "step_000000004.ckpt.corrupt"
    assert corrupt.stat().st_size == size // 2 and not newest.exists()  # kept, renamed, never deleted
    assert resolve_resume("auto", tmp_path) == older
    older.write_bytes(b"not a zip")  # none loads: an error, not a silent start from scratch
    with pytest.raises(RunFolderError, match=r"no checkpoint in .* loads \(kept as step_000000002.ckpt.corrupt\)"):
        resolve_resume("auto", tmp_path)


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_one(stage_overrides, tmp_path, capsys):
    stage = _stage(tmp_path)
    assert run(compose_train(_overrides(stage_overrides, "stage.max_steps=4"))) == 0
    older, newest = list_checkpoints(stage / "checkpoints")
    newest.write_bytes(newest.read_bytes()[:1000])
    leftover = stage / "checkpoints" / "step_000000006.ckpt.tmp-31337"
    leftover.write_bytes(b"killed save")
    (stage / "eval_metrics.jsonl").write_text('{"step": 2}\n{"step": 4}\n')
    capsys.readouterr()

    assert run(compose_train(_overrides(stage_overrides, "stage.max_steps=4"))) == 0
    assert f"[resume] {older}" in capsys.readouterr().out
    assert (stage / "checkpoints" / f"{newest.name}.corrupt").exists() and not leftover.exists()
    assert [r["batch"] for r in read_metrics(stage / "metrics.jsonl")] == [0, 1, 2, 3]
    assert read_metrics(stage / "eval_metrics.jsonl") == [{"step": 2}]  # evaluations after the checkpoint dropped


# ----- 7b. full disk ---------------------------------------------------------------------------------------------


def _fills_the_disk(kind: str):
    def save(obj, f, *args, **kwargs):
        f.write(b"\0" * 4096)  # part of the file is written, then the disk is full
        if kind == "errno":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")  # fmt: skip

    return save


@pytest.mark.parametrize("kind", ["errno", "torch"])
def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, kind):
    previous = _ckpt(tmp_path, 2)
    monkeypatch.setattr(torch, "save", _fills_the_disk(kind))
    target = tmp_path / "step_000000004.ckpt"
    with pytest.raises(DiskFullError) as caught:
        AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(250_000)}, target)
    message = str(caught.value)
    assert message.startswith(f"No space left on device while writing {target} (needs about 0.00 GB")
    assert "\n" not in message and caught.value.__cause__ is None and caught.value.__suppress_context__
    assert sorted(p.name for p in tmp_path.iterdir()) == [previous.name]  # no temporary file left
    monkeypatch.undo()
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(previous)["w"], torch.full((4,), 2.0))


def test_a_full_disk_while_exporting_leaves_the_previous_export(tmp_path, monkeypatch):
    folder = _export(tmp_path / "export", "a" * 32, 1e-4)

    def full(state, path, **kwargs):
        Path(path).write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(train.export, "save_state_dict", full)
    with pytest.raises(DiskFullError, match=rf"^No space left on device while writing {folder} \(needs about"):
        _export(tmp_path / "export", "b" * 32, 3e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert read_export_meta(folder)[1]["run_id"] == "a" * 32


def test_a_full_disk_during_training_ends_the_run_in_one_line(stage_overrides, tmp_path, monkeypatch, capsys):
    real_save, calls = torch.save, []

    def second_save_fails(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            return _fills_the_disk("torch")(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", second_save_fails)
    assert run(compose_train(_overrides(stage_overrides, "stage.max_steps=4"))) == 2
    err = capsys.readouterr().err
    checkpoints = _stage(tmp_path) / "checkpoints"
    assert f"[error] No space left on device while writing {checkpoints / 'step_000000004.ckpt'}" in err
    assert "Traceback" not in err
    assert [p.name for p in checkpoints.iterdir()] == ["step_000000002.ckpt"]
    monkeypatch.undo()
    assert torch.load(checkpoints / "step_000000002.ckpt", weights_only=True)["global_step"] == 2


# ----- 7c. a stage folder that cannot be created ----------------------------------------------------------------
# Tests run as root, for whom chmod 0o500 does not stop writes, so the read-only root is a path under a regular
# file: mkdir fails there for every user (NotADirectoryError), as it does under a read-only folder (PermissionError).


def test_a_stage_folder_that_cannot_be_created_is_one_line_and_exit_code_2(stage_overrides, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert run(compose_train(stage_overrides("autoencoder", f"paths.root={blocker}/sub"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"[error] cannot create or write the stage folder {blocker}/sub/")
    assert f"(Not a directory: {blocker} is a file); set paths.root to a writable folder (now {blocker}/sub)" in err[0]

    with pytest.raises(SystemExit) as caught:  # the same check, before Hydra makes hydra.run.dir in the folder
        CheckStageFolder().on_run_start(compose_train(stage_overrides("autoencoder", f"paths.root={blocker}/sub")))
    assert caught.value.code == 2


def test_a_read_only_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):  # what mkdir raises under a chmod 0o500 folder for a user other than root
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(RunFolderError, match=rf"stage folder {tmp_path}/x \(Permission denied: in {tmp_path}\); set"):
        ensure_writable(tmp_path / "x", root=str(tmp_path))


def test_the_command_line_with_a_read_only_root_prints_no_traceback(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "train", "stage=autoencoder", "experiment=demo", f"paths.root={blocker}/sub"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "Traceback" not in proc.stderr
    assert f"stage folder {blocker}/sub/demo/autoencoder" in proc.stderr
