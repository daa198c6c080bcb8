"""Fingerprint the whole demo recipe so a refactor can be checked against a named commit: no number changes.

Runs the demo data writer, the curation of the raw videos, every demo stage (autoencoder, temporal decoder, Stages
I, II, III t2v and i2v) for a few fixed-seed steps each and an image-to-video sample, then writes one JSON with
every training loss (as exact hex floats), a digest of each exported tensor and of every output file. Run ids,
times and log folders (values that differ from run to run by design) are left out; everything else must match.

    python scripts/refactor_check.py --out /tmp/after.json                 # this checkout
    python scripts/refactor_check.py --repo /tmp/base --out /tmp/before.json   # a worktree of the commit to match
    python scripts/refactor_check.py --compare /tmp/before.json /tmp/after.json

``--compare`` prints one JSON line (the number of fingerprints and the differing ones) and exits 1 on a difference.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from safetensors import safe_open

STAGES = ("autoencoder", "temporal_decoder", "image_pretrain", "video_pretrain", "video_finetune", "img2vid_finetune")
# Values that differ between two runs of the same code by design.
VOLATILE_KEYS = {"run_id", "created", "time", "started", "finished", "seconds", "elapsed_s", "wall_s", "date"}
VOLATILE_PARTS = {"hydra", "logs", "checkpoints", ".hydra"}
_WORK: list[str] = []  # the run's folder, written as <work> in the fingerprints (paths in the records)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _strip(value: object) -> object:
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if k not in VOLATILE_KEYS and not k.endswith("_seconds") and not k.endswith("_s")
        }
    if isinstance(value, list):
        return [_strip(v) for v in value]
    if isinstance(value, float):
        return value.hex()
    if isinstance(value, str) and _WORK:
        return value.replace(_WORK[0], "<work>")
    return value


def _json_digest(text: str) -> str:
    return _sha(json.dumps(_strip(json.loads(text)), sort_keys=True).encode())


def file_digest(path: Path) -> dict[str, str] | str:
    """One digest per file; per member for tars (headers hold times), per tensor for safetensors."""
    if path.suffix == ".tar":
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
        return {k: _json_digest(v.decode()) if k.endswith(".json") else _sha(v) for k, v in members.items()}
    if path.suffix == ".safetensors":
        with safe_open(str(path), "pt") as f:
            out = {k: _sha(f.get_tensor(k).numpy().tobytes()) for k in sorted(f.keys())}
            meta = {k: v for k, v in (f.metadata() or {}).items() if k not in VOLATILE_KEYS}
        out["__metadata__"] = _sha(json.dumps(meta, sort_keys=True).encode())
        return out
    if path.suffix == ".json":
        return _json_digest(path.read_text())
    if path.suffix == ".jsonl":
        return _sha("".join(_json_digest(line) for line in path.read_text().splitlines() if line.strip()).encode())
    if path.suffix in (".yaml", ".log", ".html", ".mp4"):
        # .mp4: x264 does not encode the same frames to the same bytes twice here; the .gif beside it holds them
        return "text"  # configs hold absolute paths and run ids; the html report embeds times
    return _sha(path.read_bytes())


def tree_digest(root: Path) -> dict[str, object]:
    return {
        str(p.relative_to(root)): file_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not VOLATILE_PARTS & set(p.relative_to(root).parts) and not p.name.endswith(".done")
    }


def losses(metrics: Path) -> list[str]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [f"{r['step']}:{float(r['train/loss']).hex()}" for r in rows if "train/loss" in r]


def run_recipe(repo: Path, work: Path, steps: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "2", "WANDB_MODE": "disabled"}
    data, runs = work / "demo_data", work / "runs"
    _WORK[:] = [str(work)]

    def call(*args: str) -> None:
        print("+", " ".join(args), file=sys.stderr, flush=True)
        subprocess.run([sys.executable, *args], cwd=repo, env=env, check=True, stdout=subprocess.DEVNULL)

    call("scripts/make_demo_data.py", "--out", str(data))
    call("-m", "data.curation", "experiment=demo", f"input={data}/raw", f"out={data}/curated")
    common = [
        "experiment=demo",
        f"paths.root={runs}",
        f"paths.data_root={data}",
        f"stage.max_steps={steps}",
        "stage.optim.warmup_steps=2",
        f"trainer.checkpoint_every_n_steps={steps}",
        "trainer.progress_bar=false",
    ]
    for stage in STAGES:
        extra = [f"data.sources.0.urls=[{data}/curated/subsets/pretrain/shards/*.tar]"] * (stage == "video_pretrain")
        call("-m", "train", f"stage={stage}", *common, *extra)
    export = runs / "demo" / "img2vid_finetune" / "export"
    image = data / "conditioning" / "clip_00002.png"
    sample_args = ["--fps", "8", "--motion-bucket-id", "80", "--steps", "4", "--seed", "0"]
    call("scripts/sample.py", "--export", str(export), "--image", str(image), *sample_args, "--out", f"{work}/samples")
    return digest(work)


def digest(work: Path) -> dict[str, object]:
    """The fingerprints of a finished run folder."""
    data, runs = work / "demo_data", work / "runs"
    _WORK[:] = [str(work)]
    out: dict[str, object] = {"demo_data": tree_digest(data / "raw"), "curated": tree_digest(data / "curated")}
    out["clips"], out["images"] = tree_digest(data / "clips"), tree_digest(data / "images")
    for stage in STAGES:
        folder = runs / "demo" / stage
        out[f"{stage}/losses"] = losses(folder / "metrics.jsonl")
        out[f"{stage}/export"] = tree_digest(folder / "export")
    out["samples"] = tree_digest(work / "samples")
    return out


def compare(before: dict, after: dict) -> dict[str, object]:
    def flat(d: object, prefix: str = "") -> dict[str, object]:
        if isinstance(d, dict):
            return {k2: v2 for k, v in d.items() for k2, v2 in flat(v, f"{prefix}{k}/").items()}
        return {prefix.rstrip("/"): d}

    a, b = flat(before), flat(after)
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return {"fingerprints": len(a), "identical": not differ, "differ": differ[:50], "n_differ": len(differ)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--work", type=Path, help="folder for the run (default: a temporary one)")
    parser.add_argument("--digest-only", action="store_true", help="fingerprint an existing --work folder")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        result = compare(*(json.loads(p.read_text()) for p in args.compare))
        print(json.dumps(result))
        return 0 if result["identical"] else 1
    if args.out is None:
        parser.error("give --out (or --compare BEFORE AFTER)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        if args.digest_only and args.work is None:
            parser.error("--digest-only needs --work")
        run = digest if args.digest_only else lambda w: run_recipe(args.repo.resolve(), w, args.steps)
        result = run(work.resolve())
    buf = io.StringIO()
    json.dump(result, buf, indent=1, sort_keys=True)
    args.out.write_text(buf.getvalue())
    print(json.dumps({"out": str(args.out), "stages": len(STAGES), "fingerprints": compare(result, {})["n_differ"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
