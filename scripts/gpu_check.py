"""The GPU check of issue 15 in one command (``scripts/gpu_check.sh`` runs it): writes ONE JSON file.

Parts, in this order, each in its own subprocess with a time budget (a CUDA error or a hang loses only that part),
the JSON rewritten atomically (temp name, then rename) after each:

- ``unet_step_ckpt_all`` / ``unet_step_ckpt_none``: the full-size SVD UNet training step (``stage=img2vid_finetune``,
  14 frames at 576x1024, latent 72x128, bf16-mixed, batch 1) with ``model.activation_checkpointing`` all / none
  (``train.perf.bench_unet_step``: AdamW, clipping and EMA included, frozen VAE and CLIP resident): samples/s, MFU
  against the card's dense bf16 peak (``train.perf.PEAK_BF16_TFLOPS``; null for a card not in it), peak memory.
  An out-of-memory step is a measurement (``fits: false``), not a failure.
- ``fit_25_frames``: the same step at 25 frames (SVD-XT), checkpointing on: does one step fit, its peak.
- ``zero2_stage``: ``python -m train stage=video_pretrain experiment=demo strategy=deepspeed_zero2 trainer=gpu
  stage.max_steps=20`` on demo shards in a temp folder (skipped without CUDA: our DeepSpeed strategies need it).
- ``planner``: ``scripts/plan.py`` with each step part's overrides (the first one only with ``--tiny``), started in
  the background at the beginning, on the CPU: its prediction against the measured peak (its GB are GiB, 2**30 bytes).
- ``pytest_gpu``: ``pytest -m gpu tests/gpu`` (skipped without CUDA: every gpu test skips itself there).

Each part records ``status`` (ok / failed with ``error`` / skipped with ``reason``) and ``seconds``; the file also
holds the card, torch and CUDA versions and the git commit. Exit code 0 when no part failed, 1 when one did, 2 when
there is no CUDA device (one line, nothing measured). ``--device cpu --tiny`` runs the parts that can run on a CPU
at tiny size (tests/scripts/test_gpu_check.py).

Usage: ``python scripts/gpu_check.py [--out outputs/gpu_check.json] [--time-limit 470] [--device cuda|cpu] [--tiny]
[--parts NAME ...] [hydra overrides for the step parts and the planner ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHILD_GROUPS: set[int] = set()  # process groups of the running children (killed with us on SIGTERM)
TAIL = 4000  # characters of a subprocess's output kept in the JSON
# Step parts: name -> (frames, activation checkpointing, warm-up steps, timed steps, budget in seconds).
FULL_STEPS = {
    "unet_step_ckpt_all": (14, "all", 3, 10, 100),
    "fit_25_frames": (25, "all", 1, 2, 100),
    "unet_step_ckpt_none": (14, "none", 3, 10, 100),
}
TINY_STEPS = {"unet_step_ckpt_all": (4, "all", 1, 2, 120), "fit_25_frames": (6, "all", 1, 1, 120)}
TINY_STEPS["unet_step_ckpt_none"] = (4, "none", 1, 2, 120)
PARTS = (*FULL_STEPS, "zero2_stage", "planner", "pytest_gpu")
BUDGETS = {"zero2_stage": 150, "planner": 150, "pytest_gpu": 200}
STEP_KEYS = ("stage=img2vid_finetune", "data.batch_size=1", "model.clip.pretrained=null")
TINY_KEYS = ("experiment=demo", "stage.height=32", "stage.width=32")
STAGE_STEPS = 20
STAGE_KEYS = (
    "stage=video_pretrain experiment=demo trainer.devices=1 stage.init.from_stage=null "
    "stage.init.keep=[unet,first_stage,conditioner] paths.run_name=gpu_check trainer.log_every_n_steps=1 "
    "trainer.checkpoint_every_n_steps=10 trainer.progress_bar=false logger.samples.every_n_steps=0 resume=never"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for the step parts and the planner")
    p.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check.json")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes (experiment=demo at 32x32, 4-6 frames)")
    p.add_argument("--time-limit", type=float, default=470.0, help="seconds for all parts together")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="run only these parts")
    p.add_argument("--gpu-memory", type=float, default=80.0, help="the planner's --gpu-memory (GB per GPU)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one step part (JSON), result to --worker-out
    p.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "cpu" and not args.tiny:
        p.error("--device cpu needs --tiny (the full-size SVD step takes hours on a CPU)")
    return args


def step_overrides(args: argparse.Namespace, name: str) -> list[str]:
    frames, ckpt = (TINY_STEPS if args.tiny else FULL_STEPS)[name][:2]
    device = ["trainer=gpu" if args.device == "cuda" else "trainer=cpu"]
    keys = [*STEP_KEYS, *(TINY_KEYS if args.tiny else ()), *device]
    return [*keys, f"stage.num_frames={frames}", f"model.activation_checkpointing={ckpt}", *args.overrides]


def child_env(args: argparse.Namespace, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    return env | extra


def run_child(cmd: list[str], *, timeout: float, env: dict[str, str]) -> tuple[int, str]:
    """(exit code, output tail); past ``timeout`` the child's process group is killed and ``TimeoutError`` raised."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: data-loader workers may outlive a kill
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        CHILD_GROUPS.add(proc.pid)
        try:
            proc.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            log.seek(0)
            raise TimeoutError(f"killed after {timeout:.0f} s; output tail: {log.read()[-TAIL:]}") from None
        finally:
            CHILD_GROUPS.discard(proc.pid)
        log.seek(0)
        return proc.returncode, log.read()[-TAIL:]


def kill_children(signum: int, _frame: Any) -> None:
    """SIGTERM (``timeout`` in gpu_check.sh): the children run in their own sessions, so end them too."""
    for pgid in list(CHILD_GROUPS):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    sys.exit(128 + signum)


class PartError(RuntimeError):
    """A failed part that still measured something (kept in the JSON beside the error)."""

    def __init__(self, message: str, result: dict[str, Any]) -> None:
        super().__init__(message)
        self.result = result


# ----- parts -------------------------------------------------------------------------------------------------------
def step_part(args: argparse.Namespace, name: str, *, timeout: float) -> dict[str, Any]:
    """One step part in a child process (``--worker``): ``train.perf.bench_unet_step``'s result."""
    warmup, steps = (TINY_STEPS if args.tiny else FULL_STEPS)[name][2:4]
    job = {"overrides": step_overrides(args, name), "device": args.device, "warmup": warmup, "steps": steps}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(job), "--worker-out", str(out)]
        code, tail = run_child(cmd, timeout=timeout, env=child_env(args))
        if code != 0 or not out.is_file():
            raise RuntimeError(f"the step worker exited with {code}; output tail: {tail}")
        return {"overrides": job["overrides"], **json.loads(out.read_text())}


def worker(job: dict[str, Any], out: Path) -> None:
    import torch

    from train.perf import bench_unet_step

    if job["device"] == "cpu":
        torch.set_num_threads(1)
    cfg = compose(job["overrides"])
    result = bench_unet_step(cfg, device=torch.device(job["device"]), warmup=job["warmup"], steps=job["steps"])
    out.write_text(json.dumps(result))


def compose(overrides: list[str]) -> Any:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from train.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def stage_part(args: argparse.Namespace, *, timeout: float, strategy: str = "deepspeed_zero2") -> dict[str, Any]:
    """``STAGE_STEPS`` steps of a tiny stage under ``strategy`` (``python -m train``) on demo shards in a temp
    folder: every step finite, the checkpoints and the export written."""
    from data.demo_data import write_demo_dataset

    with tempfile.TemporaryDirectory(prefix="gpu_check_stage_") as tmp:
        data, runs = Path(tmp) / "demo_data", Path(tmp) / "runs"
        write_demo_dataset(data, seed=0, num_raw_videos=0, num_clips=8, num_images=8, samples_per_shard=4)
        device = "trainer=gpu" if args.device == "cuda" else "trainer=cpu"
        keys = [f"strategy={strategy}", device, f"stage.max_steps={STAGE_STEPS}"]
        overrides = [*STAGE_KEYS.split(), *keys, f"paths.root={runs}", f"paths.data_root={data}"]
        code, tail = run_child([sys.executable, "-m", "train", *overrides], timeout=timeout, env=child_env(args))
        if code != 0:
            raise RuntimeError(f"python -m train exited with {code}; output tail: {tail}")
        stage = runs / "gpu_check" / "video_pretrain"
        rows = [json.loads(line) for f in stage.glob("**/metrics.jsonl") for line in f.read_text().splitlines()]
        losses = [r["train/loss"] for r in rows if not r.get("skipped")]
        last_step = max((int(r["step"]) for r in rows), default=0)
        finite = all(abs(v) < float("inf") for v in losses)  # NaN fails the comparison too
        if last_step != STAGE_STEPS or not losses or not finite:
            raise RuntimeError(f"expected {STAGE_STEPS} steps with finite losses; got step {last_step}: {losses}")
        export = stage / "export" / "model.safetensors"
        if not export.is_file():
            raise RuntimeError(f"no export at {export}; output tail: {tail}")
        return {
            "overrides": overrides,
            "steps": last_step,
            "losses": [round(v, 5) for v in losses],
            "checkpoints": sorted(p.name for p in (stage / "checkpoints").iterdir()),
            "export_bytes": export.stat().st_size,
        }


def pytest_part(args: argparse.Namespace, *, timeout: float, paths: tuple[str, ...] = ("tests/gpu",)) -> dict[str, Any]:
    """``pytest -m gpu`` over ``paths`` (tests/gpu holds every gpu test; collecting the whole suite would import
    every test's dependencies): outcome and seconds per test from its JUnit XML."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_pytest_") as tmp:
        junit = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
        code, tail = run_child([*cmd, *paths], timeout=timeout, env=child_env(args))
        tests = []
        for case in ET.parse(junit).getroot().iter("testcase") if junit.is_file() else ():
            tags = [c.tag for c in case if c.tag in ("failure", "error", "skipped")]
            outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tags[0]] if tags else "passed"
            name = f"{case.get('classname')}::{case.get('name')}"
            tests.append({"test": name, "outcome": outcome, "seconds": float(case.get("time") or 0.0)})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    result = {"exit_code": code, "counts": counts, "tests": tests, "output_tail": tail[-2000:]}
    if code != 0:
        raise PartError(f"pytest -m gpu exited with {code} ({counts})", result)
    return result


def start_planners(args: argparse.Namespace, folder: Path) -> dict[str, tuple[subprocess.Popen, Path]]:
    """``scripts/plan.py`` for each step part, in the background on the CPU (CUDA hidden), output to a file."""
    plan = REPO / "scripts" / "plan.py"
    if not plan.is_file():
        return {}
    env = child_env(args, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    procs = {}
    names = [n for n in FULL_STEPS if n in args.parts]
    for name in names[:1] if args.tiny else names:  # --tiny: one plan (the same code path), less CPU for the test
        cmd = [sys.executable, str(plan), *step_overrides(args, name), "--gpu-memory", str(args.gpu_memory)]
        log = folder / f"plan_{name}.log"
        with open(log, "w") as f:
            procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT), log)
    return procs


def planner_part(procs: dict[str, tuple[subprocess.Popen, Path]], parts: dict, *, timeout: float) -> dict[str, Any]:
    """Each plan.py's last stdout line (a JSON object) against its step part's measured peak."""
    if not procs:
        raise RuntimeError(f"no {REPO / 'scripts' / 'plan.py'}; the planner comparison needs it")
    deadline = time.monotonic() + timeout
    result: dict[str, Any] = {}
    errors = []
    for name, (proc, log) in procs.items():
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            errors.append(f"{name}: plan.py still running after {timeout:.0f} s")
            continue
        lines = log.read_text().strip().splitlines()
        try:
            predicted = json.loads(lines[-1]) if proc.returncode == 0 and lines else None
        except json.JSONDecodeError:
            predicted = None
        if not isinstance(predicted, dict):
            errors.append(f"{name}: plan.py exited with {proc.returncode}: {log.read_text()[-1500:]}")
            continue
        measured = parts.get(name, {}).get("result", {})
        peak = measured.get("peak_allocated_bytes") if measured.get("fits") else None
        row = {"predicted": predicted, "measured_fits": measured.get("fits"), "measured_peak_gb": None}
        if peak:  # plan.py's _gb are GiB (2**30 bytes)
            row["measured_peak_gb"] = round(peak / 2**30, 6)
            # The measured step starts from latents (no VAE encode): compare the planner's UNet-step peak.
            key = "unet_step_gb" if "unet_step_gb" in predicted else "total_gb"
            if isinstance(predicted.get(key), int | float):
                row["predicted_over_measured"], row["predicted_field"] = round(predicted[key] * 2**30 / peak, 4), key
        row["measured_flops_per_sample"] = measured.get("unet_train_flops_per_sample")
        result[name] = row
    if errors:
        raise PartError("; ".join(errors), result)
    return result


# ----- the run -----------------------------------------------------------------------------------------------------
def headline(parts: dict[str, Any]) -> dict[str, Any]:
    """The figures a reader wants first, from the parts' results."""
    result = {n: p.get("result", {}) for n, p in parts.items()}
    keys = ("fits", "samples_per_s", "mfu", "peak_allocated_gib", "peak_reserved_gib")
    out: dict[str, Any] = {n: {k: result[n].get(k) for k in keys} for n in FULL_STEPS if n in result}
    out["zero2_stage"] = parts.get("zero2_stage", {}).get("status")
    out["pytest_gpu"] = result.get("pytest_gpu", {}).get("counts")
    planner = result.get("planner", {})
    out["planner_total_over_measured_peak"] = {n: row.get("predicted_over_measured") for n, row in planner.items()}
    return out


def write_atomic(path: Path, report: dict[str, Any]) -> None:
    report["headline"] = headline(report["parts"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def skip_reason(args: argparse.Namespace, name: str) -> str | None:
    if name not in args.parts:
        return "not in --parts"
    if args.device != "cuda" and name == "zero2_stage":
        return "no CUDA: our DeepSpeed strategies run on CUDA (the CPU ZeRO runs are tests/train's, issue 15 item 3)"
    if args.device != "cuda" and name == "pytest_gpu":
        return "no CUDA: every gpu test skips itself without one"
    return None


def run_part(entry: dict[str, Any], fn: Callable[[float], dict[str, Any]], *, budget: float, deadline: float) -> None:
    """Run one part into ``entry``: status ok with its result, or failed with the error."""
    timeout = min(budget, deadline - time.monotonic())
    entry |= {"status": "running", "budget_s": budget}
    if timeout < 5:
        entry |= {"status": "failed", "error": "not run: the parts before spent the --time-limit"}
        return
    start = time.monotonic()
    try:
        entry |= {"result": fn(timeout), "status": "ok"}
    except Exception as err:  # one part's failure is recorded; the others still run
        entry |= {"status": "failed", "error": f"{type(err).__name__}: {err}"[-TAIL:]}
        if isinstance(err, PartError):
            entry["result"] = err.result
    entry["seconds"] = round(time.monotonic() - start, 2)


def check(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    from train.perf import environment

    start = time.monotonic()
    deadline = start + args.time_limit
    report: dict[str, Any] = {
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "args": {
            "device": args.device,
            "tiny": args.tiny,
            "time_limit_s": args.time_limit,
            "overrides": args.overrides,
        },
        "environment": environment(args.device, repo=REPO),
        "parts": {},
    }
    write_atomic(args.out, report)
    planners = start_planners(args, folder) if "planner" in args.parts else {}
    table = TINY_STEPS if args.tiny else FULL_STEPS
    jobs: list[tuple[str, Callable[[float], dict[str, Any]], float]] = [
        *((n, lambda t, n=n: step_part(args, n, timeout=t), table[n][4]) for n in FULL_STEPS),
        ("zero2_stage", lambda t: stage_part(args, timeout=t), BUDGETS["zero2_stage"]),
        ("planner", lambda t: planner_part(planners, report["parts"], timeout=t), BUDGETS["planner"]),
        ("pytest_gpu", lambda t: pytest_part(args, timeout=t), BUDGETS["pytest_gpu"]),
    ]
    try:
        for name, fn, budget in jobs:
            report["parts"][name] = entry = {}
            reason = skip_reason(args, name)
            if reason is None:
                write_atomic(args.out, report | {"running": name})  # a hard stop shows where it was
                run_part(entry, fn, budget=budget, deadline=deadline)
            else:
                entry |= {"status": "skipped", "reason": reason}
            write_atomic(args.out, report)
    finally:
        for proc, _ in planners.values():
            if proc.poll() is None:
                proc.kill()
    failed = [n for n, p in report["parts"].items() if p["status"] == "failed"]
    report |= {"status": "failed" if failed else "ok", "failed_parts": failed}
    report["seconds"] = round(time.monotonic() - start, 2)
    write_atomic(args.out, report)
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), args.worker_out)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing measured", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, kill_children)
    try:
        with tempfile.TemporaryDirectory(prefix="gpu_check_run_") as folder:
            report = check(args, Path(folder))
    finally:
        signal.signal(signal.SIGTERM, previous)
    failed = ", ".join(report["failed_parts"]) or "no part failed"
    print(f"gpu_check: {report['status']} in {report['seconds']:.0f} s ({failed}); wrote {args.out}")
    return 1 if report["failed_parts"] else 0


if __name__ == "__main__":
    sys.exit(main())
