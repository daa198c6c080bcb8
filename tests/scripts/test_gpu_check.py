"""scripts/gpu_check.py: the whole driver end to end on the CPU at tiny size, its one-line refusal without CUDA, and
the pieces that only run on a GPU machine (process-group kill on a timeout, JUnit parsing, one failed part)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.conftest import load_script

STEP_PARTS = ("unet_step_ckpt_all", "fit_25_frames", "unet_step_ckpt_none")


def _script() -> ModuleType:
    return load_script("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert _script().main(["--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "no CUDA device" in captured.err and "nothing measured" in captured.err
    assert not out.exists()
    with pytest.raises(SystemExit):
        _script().parse_args(["--device", "cpu"])  # the full size on a CPU is refused: --tiny only


def test_cpu_tiny_run_writes_every_part(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert _script().main(["--device", "cpu", "--tiny", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    report = json.loads(out.read_text())
    assert not Path(f"{out}.tmp").exists()
    assert report["status"] == "ok" and report["failed_parts"] == []
    assert list(report["parts"]) == list(_script().PARTS)
    assert report["environment"]["card"] == "cpu" and report["environment"]["torch"] == torch.__version__
    for name in STEP_PARTS:
        part = report["parts"][name]
        assert part["status"] == "ok", part
        r = part["result"]
        assert r["fits"] is True and r["oom"] is None
        assert r["samples_per_s"] > 0 and r["step_s_median"] > 0 and r["achieved_tflops"] > 0
        assert r["unet_bwd_flops_per_sample"] > r["unet_fwd_flops_per_sample"] > 0
        assert r["mfu"] is None and r["peak_bf16_tflops"] is None and "CPU" in r["mfu_note"]
        state = r["state_bytes"]
        # AdamW: two fp32 moments per parameter (plus a step count); EMA: one fp32 copy (plus an update count).
        assert state["optimizer"] == pytest.approx(2 * state["trainable_params"], rel=0.01)
        assert state["ema"] == pytest.approx(state["trainable_params"], rel=0.01) and state["grads"] > 0
        assert state["frozen_params_and_buffers"] > 0 and state["inputs"] > 0
        held = sum(v for k, v in state.items() if k != "grads")
        assert r["peak_allocated_bytes"] > held and r["peak_minus_held_state_bytes"] > 0
        assert len(r["step_times_s"]) == r["warmup"] + r["steps"] and all(map(_finite, r["losses"]))
        assert (r["height"], r["width"], r["latent_hw"], r["batch"], r["precision"]) == (32, 32, [8, 8], 1, "32-true")
        headline = report["headline"][name]
        assert headline["fits"] is True and headline["samples_per_s"] == r["samples_per_s"] and headline["mfu"] is None
    parts = report["parts"]
    assert parts["unet_step_ckpt_all"]["result"]["activation_checkpointing"] == "all"
    assert parts["unet_step_ckpt_none"]["result"]["activation_checkpointing"] == "none"
    assert parts["fit_25_frames"]["result"]["frames"] == 6 and parts["unet_step_ckpt_all"]["result"]["frames"] == 4
    for name in ("zero2_stage", "pytest_gpu"):
        assert parts[name]["status"] == "skipped" and "no CUDA" in parts[name]["reason"]
    planner = parts["planner"]
    assert planner["status"] == "ok", planner
    assert list(planner["result"]) == ["unet_step_ckpt_all"]  # --tiny plans the first step part only
    for name in planner["result"]:
        row = planner["result"][name]
        assert row["measured_fits"] is True and row["measured_peak_gb"] > 0
        assert row["predicted"]["total_gb"] > 0 and row["predicted_over_measured"] > 0
        assert row["measured_flops_per_sample"] == parts[name]["result"]["unet_train_flops_per_sample"]
    assert list(report["headline"]["planner_total_over_measured_peak"]) == ["unet_step_ckpt_all"]
    assert "running" not in report and report["seconds"] > 0


def _finite(v: float) -> bool:
    return abs(v) < float("inf")


def test_a_timed_out_child_is_killed_with_its_children(tmp_path):
    script = _script()
    args = script.parse_args(["--device", "cpu", "--tiny"])
    # The child starts a grandchild that would hold the output open: both go with the process group.
    code = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
    code += "print('started', flush=True); time.sleep(60)"
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="killed after 2 s; output tail: started"):
        script.run_child([sys.executable, "-c", code], timeout=2, env=script.child_env(args))
    assert time.monotonic() - start < 20 and not script.CHILD_GROUPS


def test_a_failed_part_keeps_its_error_and_result():
    script = _script()
    entry: dict = {}

    def fails(timeout: float) -> dict:
        raise script.PartError("pytest -m gpu exited with 1", {"counts": {"failed": 1}})

    script.run_part(entry, fails, budget=30, deadline=time.monotonic() + 100)
    assert entry["status"] == "failed" and entry["error"] == "PartError: pytest -m gpu exited with 1"
    assert entry["result"] == {"counts": {"failed": 1}} and entry["budget_s"] == 30 and entry["seconds"] >= 0
    late: dict = {}
    script.run_part(late, fails, budget=30, deadline=time.monotonic() + 1)
    assert late["status"] == "failed" and "time-limit" in late["error"]


def test_pytest_part_reads_the_junit_report():
    script = _script()
    args = script.parse_args(["--device", "cpu", "--tiny"])
    result = script.pytest_part(args, timeout=120, paths=("tests/gpu/test_cuda_unet.py",))
    expected = "passed" if torch.cuda.is_available() else "skipped"
    assert result["exit_code"] == 0 and result["counts"][expected] == 2
    assert all(t["test"].endswith(("_matches_fp32_cpu", "_large_latent_runs")) for t in result["tests"])


@pytest.mark.slow
def test_stage_part_runs_a_tiny_stage_on_cpu():
    # The zero2_stage part's code with the strategy that runs on a CPU (the part itself needs CUDA).
    script = _script()
    args = script.parse_args(["--device", "cpu", "--tiny"])
    result = script.stage_part(args, timeout=300, strategy="auto")
    assert result["steps"] == script.STAGE_STEPS and len(result["losses"]) == script.STAGE_STEPS
    assert result["export_bytes"] > 0 and result["checkpoints"]


def test_card_peaks_and_out_of_memory_answers(monkeypatch):
    from train.perf import UNetStep, bench_unet_step, is_out_of_memory, peak_bf16_tflops

    assert peak_bf16_tflops("NVIDIA H100 80GB HBM3") == 989.4 and peak_bf16_tflops("NVIDIA H100 PCIe") == 756.5
    assert peak_bf16_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_bf16_tflops("NVIDIA H200") == 989.4
    assert peak_bf16_tflops("NVIDIA L40S") == 362.0 and peak_bf16_tflops("NVIDIA GeForce RTX 4090") is None
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))

    # An out-of-memory step is an answer (fits: false), not a failure; any other error propagates.
    script = _script()
    args = script.parse_args(["--device", "cpu", "--tiny"])
    cfg = script.compose(script.step_overrides(args, "fit_25_frames"))
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB\nmore")
    monkeypatch.setattr(UNetStep, "__call__", lambda self: (_ for _ in ()).throw(oom))
    result = bench_unet_step(cfg, device=torch.device("cpu"), warmup=1, steps=1)
    assert result["fits"] is False and result["steps_done"] == 0 and "samples_per_s" not in result
    assert result["oom"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 GiB"
    assert result["state_bytes"]["trainable_params"] > 0 and result["frames"] == 6
    monkeypatch.setattr(UNetStep, "__call__", lambda self: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench_unet_step(cfg, device=torch.device("cpu"), warmup=1, steps=1)
