"""The pipeline and the curation array on the two-node local SLURM (scripts/local_slurm.sh --nodes 2): stages chained
across nodes (one task per node), and the curation array with one task per node giving the bytes of a local run."""

from __future__ import annotations

import pytest

from data.curation.runner import run

from ..data.curation.test_pipeline import TINY, curate_config, tree, write_raw
from .test_curate_array import curate_sh, wait_done, with_env_file
from .test_stage_jobs import CPU_JOB, log_of, sh, wait

pytestmark = pytest.mark.slurm


def test_the_pipeline_chains_stages_across_two_nodes(two_nodes, slurm_env, stage_overrides, tmp_path):
    logs = tmp_path / "logs"
    overrides = [o for o in stage_overrides("image_pretrain", "stage.max_steps=2") if not o.startswith("stage=")]
    sbatch_args = " ".join([*CPU_JOB, "--nodes=2", "--ntasks-per-node=1"])
    out = sh(["slurm/pipeline.sh", "--stages", "autoencoder image_pretrain", "--sbatch-args", sbatch_args,
              "--logs", str(logs), *overrides], slurm_env)  # fmt: skip
    jobs = dict(line.split() for line in out.strip().splitlines())
    assert list(jobs) == ["autoencoder", "image_pretrain"]
    for job in jobs.values():
        assert wait(job, slurm_env) == "COMPLETED", log_of(logs, job)
        log = log_of(logs, job)
        assert "nodes n[1-2] tasks/node 1" in log and "Starting with 2 processes" in log, log
    assert "autoencoder/export/model.safetensors" in log_of(logs, jobs["image_pretrain"])
    for stage in jobs:
        assert (tmp_path / "runs" / "demo" / stage / "export" / "model.safetensors").exists()


def test_the_curation_array_over_both_nodes_gives_the_bytes_of_a_local_run(two_nodes, tmp_path):
    raw = write_raw(tmp_path / "raw", 3)
    logs, slurm_out, local_out = tmp_path / "logs", tmp_path / "slurm_out", tmp_path / "local_out"
    env = with_env_file(two_nodes, tmp_path)
    # Each task asks for all of a node's CPUs, so the two tasks run at once, one on each node.
    job = "--nodes=1 --ntasks=1 --cpus-per-task=2 --time=15"
    args = ["--tasks", "2", "--sbatch-args", job, "--logs", str(logs), f"input={raw}", f"out={slurm_out}", *TINY]
    submitted = curate_sh(args, env)
    assert submitted.returncode == 0, submitted.stderr
    jobs = dict(line.split() for line in submitted.stdout.strip().splitlines())

    run(curate_config(raw, local_out), progress=False)  # the reference, while the jobs run

    (merge,) = wait_done(jobs["merge"], env)
    tasks = wait_done(jobs["annotate"], env)
    everything = "\n".join(p.read_text() for p in logs.glob("*.out"))
    assert merge["JobState"] == "COMPLETED" and len(tasks) == 2, everything
    assert all(t["JobState"] == "COMPLETED" for t in tasks), everything
    assert sorted(t["BatchHost"] for t in tasks) == ["n1", "n2"], tasks
    slurm_tree, local_tree = tree(slurm_out), tree(local_out)
    assert "summary.json" in slurm_tree and slurm_tree.keys() == local_tree.keys()
    assert [k for k in slurm_tree if slurm_tree[k] != local_tree[k]] == []
