"""Real tiny stages under DeepSpeed ZeRO-2 and ZeRO-3 with two processes on CPU (DeepSpeed's CPU accelerator, gloo),
through the test-only strategies ``deepspeed_zero2_cpu`` / ``deepspeed_zero3_cpu`` (``tests/train/cpu_deepspeed.py``).

One config serves every check: 6 optimizer steps of ``video_pretrain`` with a NaN gradient injected at batch 1, so
each run has 7 batches and one skipped step. The runs are made once per module and shared:

- ``ddp``: the same config under 2-process DDP, the reference for the losses;
- ``zero2`` / ``zero3``: uninterrupted DeepSpeed runs (the DDP comparison, the resume reference, NaN, EMA, export);
- ``zero3_killed`` (and ``zero2_killed``, marked slow): SIGKILLed while the checkpoint of step 4 exists only under
  its temporary name (every rank wrote its shards, the rename had not happened), then run again (``resume=auto``).

The losses are compared with a tolerance, not bitwise: DeepSpeed averages the gradients in its own flat buckets
(ZeRO-2 reduces, ZeRO-3 reduce-scatters partitions) and computes the clipping norm from its partitions, so the fp32
sums round in another order than DDP's. Here (seen on CPU: 6 steps) the losses came out bitwise equal anyway and the
exported weights within 1.2e-7 of DDP's; the tolerances leave room for that rounding to grow. Only the first loss
(same weights, same batch, same noise, before any update) must be bitwise equal.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from train.checkpointing import TMP_MARK, list_checkpoints
from train.module import read_metrics

from .conftest import assert_same_export_weights, tiny_stage_overrides
from .cpu_deepspeed import StageRun, run_stage

pytest.importorskip("deepspeed")

pytestmark = pytest.mark.processes  # several ranks per test: one at a time under xdist

STAGE, WORLD, STEPS, NAN_AT, KILL_AT_SAVE = "video_pretrain", 2, 6, 1, 4
RUN = (
    "trainer.accelerator=cpu",
    f"trainer.devices={WORLD}",
    "stage.init.from_stage=null",
    "stage.init.keep=[unet,first_stage,conditioner]",
    f"stage.max_steps={STEPS}",
    "stage.optim.warmup_steps=10",  # every applied step changes the lr, a skipped one does not
    f"debug.nonfinite_grad_at=[{NAN_AT}]",
)
STRATEGIES = {"ddp": "ddp", "zero2": "deepspeed_zero2_cpu", "zero3": "deepspeed_zero3_cpu"}
# Relative difference of a loss from the DDP run's: fp32 rounding in another summation order, through 6 AdamW steps.
LOSS_RTOL = 1e-5


class Runs:
    """The module's runs, each made on first use; a failed one fails every test that needs it, without a rerun."""

    def __init__(self, root: Path, data_root: Path) -> None:
        self.root, self.data_root = root, data_root
        self.done: dict[str, StageRun] = {}

    def overrides(self, name: str) -> list[str]:
        strategy = STRATEGIES[name.removesuffix("_killed")]
        extra = (f"strategy.name={strategy}", f"paths.run_name={name}", *RUN)
        return tiny_stage_overrides(STAGE, *extra, root=self.root, data_root=self.data_root)

    def folder(self, name: str) -> Path:
        return self.root / name / STAGE

    def get(self, name: str, *, kill_at_save_step: int | None = None) -> StageRun:
        key = f"{name}@{kill_at_save_step}"
        if key not in self.done:
            self.done[key] = run_stage(self.overrides(name), kill_at_save_step=kill_at_save_step)
        run = self.done[key]
        if kill_at_save_step is None:
            assert run.returncode == 0 and [r["code"] for r in run.results] == [0] * WORLD, run.output[-4000:]
        return run


@pytest.fixture(scope="module")
def runs(demo_shards, tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("deepspeed_stages") / "runs", demo_shards)


def _rows(folder: Path) -> list[dict]:
    rows = read_metrics(folder / "metrics.jsonl")
    assert [r["batch"] for r in rows] == list(range(STEPS + 1)), rows  # once per batch, rank 0
    return rows


def _final_checkpoint(folder: Path) -> Path:
    last = list_checkpoints(folder / "checkpoints")[-1]
    assert last.name == f"step_{STEPS:09d}.ckpt" and last.is_dir(), last
    return last


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_deepspeed_losses_follow_the_ddp_run_and_skip_the_nan_step(runs, zero):
    runs.get("ddp")
    run = runs.get(zero)
    ddp, ds = _rows(runs.folder("ddp")), _rows(runs.folder(zero))
    assert ds[0]["train/loss"] == ddp[0]["train/loss"]  # same weights, batch and noise: bitwise before any update
    for a, b in zip(ddp, ds, strict=True):
        assert b["train/loss"] == pytest.approx(a["train/loss"], rel=LOSS_RTOL), (a, b)
        assert (b["skipped"], b["step"], b["train/lr"]) == (a["skipped"], a["step"], a["train/lr"])
    # The NaN gradient at batch 1: DeepSpeed's engine skipped the update; the loop counted it, on every rank, and
    # advanced neither the step count, nor the lr schedule, nor the EMA.
    assert [r["skipped"] for r in ds] == [i == NAN_AT for i in range(STEPS + 1)]
    assert [r["step"] for r in ds] == [1, 1, 2, 3, 4, 5, 6]
    assert ds[-1]["train/nonfinite_skipped"] == 1.0
    assert [r["ema_updates"] for r in run.results] == [list(range(1, STEPS + 1))] * WORLD
    shards = list(_final_checkpoint(runs.folder(zero)).glob("checkpoint/*optim_states.pt"))
    assert len(shards) == WORLD, shards  # ZeRO partitions the optimizer state: one shard per rank


# ZeRO-2's resume (bitwise too, about 45 s more) is slow-marked to keep make test short; ZeRO-3's is the harder one.
@pytest.mark.parametrize("zero", [pytest.param("zero2", marks=pytest.mark.slow), "zero3"])
def test_deepspeed_run_killed_during_a_checkpoint_save_resumes_bit_for_bit(runs, zero):
    runs.get(zero)
    killed = runs.get(f"{zero}_killed", kill_at_save_step=KILL_AT_SAVE)
    folder = runs.folder(f"{zero}_killed")
    assert killed.returncode == -9 and not killed.results, killed.output[-4000:]
    left = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert any(name.startswith(f"step_{KILL_AT_SAVE:09d}.ckpt{TMP_MARK}") for name in left), left
    newest = list_checkpoints(folder / "checkpoints")[-1]
    assert newest.name == f"step_{KILL_AT_SAVE - 2:09d}.ckpt", left  # the newest complete one
    assert not (folder / "export").exists()

    resumed = runs.get(f"{zero}_killed")  # the same command again; resume=auto is the default
    assert f"[resume] {newest}" in resumed.output
    assert not list((folder / "checkpoints").glob(f"*{TMP_MARK}*"))  # the interrupted save was cleaned up
    a, b = _rows(runs.folder(zero)), _rows(folder)
    assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
    assert [r["skipped"] for r in a] == [r["skipped"] for r in b]
    # The resumed half counts EMA updates from the checkpoint's.
    assert [r["ema_updates"] for r in resumed.results] == [list(range(KILL_AT_SAVE - 1, STEPS + 1))] * WORLD
    from train.strategies import consolidate_deepspeed_checkpoint

    state_a = consolidate_deepspeed_checkpoint(_final_checkpoint(runs.folder(zero)))
    state_b = consolidate_deepspeed_checkpoint(_final_checkpoint(folder))
    assert state_a.keys() == state_b.keys()
    for key, value in state_a.items():
        assert torch.equal(value, state_b[key]), key
    assert_same_export_weights(runs.folder(zero) / "export", folder / "export")


def test_zero3_export_holds_the_ema_of_the_consolidated_sharded_weights(runs):
    from models.checkpoints import load_state_dict
    from train.strategies import consolidate_deepspeed_checkpoint

    runs.get("zero3")
    folder = runs.folder("zero3")
    exported = load_state_dict(folder / "export" / "model.safetensors")
    state = consolidate_deepspeed_checkpoint(_final_checkpoint(folder))  # fp32 master weights, gathered shards
    assert int(state["ema.num_updates"]) == STEPS
    trained = 0
    for key, value in exported.items():
        shadow = state.get("ema." + key.replace(".", "__"))
        weight = state["objective.model." + key]
        assert value.shape == weight.shape and value.dtype == weight.dtype, key
        if shadow is None:  # frozen (VAE, CLIP towers) or a buffer: the weights as they are
            assert torch.equal(value, weight), key
            continue
        trained += 1
        assert torch.equal(value, shadow), key  # the export carries the EMA, not the last weights
    assert trained > 0
    assert any(not torch.equal(exported[k], state["objective.model." + k]) for k in exported if "diffusion" in k)
    # The EMA of the sharded run follows the DDP run's (the EMA reads the gathered full weights every step).
    runs.get("ddp")
    reference = load_state_dict(runs.folder("ddp") / "export" / "model.safetensors")
    assert reference.keys() == exported.keys()
    for key, value in exported.items():
        torch.testing.assert_close(value, reference[key], rtol=1e-4, atol=1e-6, msg=key)


def test_frozen_scalar_parameters_become_buffers_with_the_same_state_dict():
    from train.strategies import frozen_scalars_as_buffers

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Module())
    net[1].scale = torch.nn.Parameter(torch.tensor(2.5), requires_grad=False)  # like CLIP's logit_scale
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert frozen_scalars_as_buffers(net) == ["1.scale"]
    after = net.state_dict()
    assert after.keys() == before.keys() and "1.scale" in dict(net.named_buffers())
    for key, value in before.items():
        assert after[key].shape == value.shape and after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    net[1].trained = torch.nn.Parameter(torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"trainable 0-dim parameter 1\.trained"):
        frozen_scalars_as_buffers(net)
