"""Strategy construction, DeepSpeed configs, atomic checkpoint renames and ZeRO checkpoint consolidation (CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.strategies import DDPStrategy

from train.checkpointing import replace_path
from train.strategies import (
    AtomicDeepSpeedStrategy,
    consolidate_deepspeed_checkpoint,
    deepspeed_config,
    remove_stale_tmp_checkpoints,
    tmp_checkpoint_path,
)
from train.strategy_registry import build_strategy, get_strategy, strategy_clips_gradients, strategy_names


def test_zero2_config() -> None:
    cfg = deepspeed_config(2, precision="bf16-mixed", gradient_clip_val=1.0, offload_optimizer=True)
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 2 and zero["contiguous_gradients"] and zero["overlap_comm"]
    assert zero["allgather_bucket_size"] == 500_000_000 and zero["reduce_bucket_size"] == 500_000_000
    assert zero["offload_optimizer"]["device"] == "cpu" and "offload_param" not in zero
    assert not any(k.startswith("stage3_") for k in zero)
    assert cfg["bf16"] == {"enabled": True}
    assert cfg["gradient_clipping"] == 1.0
    assert cfg["zero_force_ds_cpu_optimizer"] is False
    # Filled by Lightning from the Trainer and the loader.
    assert "train_micro_batch_size_per_gpu" not in cfg and "gradient_accumulation_steps" not in cfg


def test_zero3_config() -> None:
    cfg = deepspeed_config(
        3, precision="32-true", gradient_clip_val=None, offload_params=True, stage3_param_persistence_threshold=7
    )
    zero = cfg["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_param_persistence_threshold"] == 7
    assert zero["stage3_prefetch_bucket_size"] == 50_000_000
    assert zero["offload_param"]["device"] == "cpu" and "offload_optimizer" not in zero
    assert "allgather_bucket_size" not in zero
    assert cfg["bf16"] == {"enabled": False}
    assert cfg["gradient_clipping"] == 0.0
    assert "zero_force_ds_cpu_optimizer" not in cfg
    assert (
        deepspeed_config(3, precision="bf16-mixed", gradient_clip_val=0.5, micro_batch_size=4)[
            "train_micro_batch_size_per_gpu"
        ]
        == 4
    )


def test_configs_are_valid_for_deepspeed() -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    for stage in (2, 3):
        cfg = deepspeed_config(stage, precision="bf16-mixed", gradient_clip_val=1.0, offload_optimizer=True)
        parsed = DeepSpeedZeroConfig(**cfg["zero_optimization"])
        assert int(parsed.stage) == stage and parsed.overlap_comm
    parsed = DeepSpeedZeroConfig(
        **deepspeed_config(3, precision="bf16-mixed", gradient_clip_val=None)["zero_optimization"]
    )
    assert parsed.param_persistence_threshold == 100_000


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(stage=1), "stage 1"),
        (dict(precision="bf16"), "bf16-mixed"),
        (dict(gradient_clip_val=-1.0), ">= 0"),
        (dict(offload_params=True), "stage 3"),
        (dict(allgather_bucket_size=0), "allgather_bucket_size"),
    ],
)
def test_config_errors(kwargs: dict, match: str) -> None:
    args = dict(stage=2, precision="bf16-mixed", gradient_clip_val=1.0) | kwargs
    stage = args.pop("stage")
    with pytest.raises(ValueError, match=match):
        deepspeed_config(stage, **args)


def test_names_and_clipping_owner() -> None:
    names = strategy_names()
    assert names == ("auto", "ddp", "deepspeed_zero2", "deepspeed_zero3")
    assert [strategy_clips_gradients(n) for n in names] == [False, False, True, True]
    assert [get_strategy(n).shards_weights for n in names] == [False, False, False, True]
    # Single-file checkpoints through the atomic CheckpointIO plugin; DeepSpeed writes (and consolidates) folders.
    assert [get_strategy(n).checkpoint_io is not None for n in names] == [True, True, False, False]
    assert [get_strategy(n).consolidate is not None for n in names] == [False, False, True, True]
    with pytest.raises(ValueError, match="deepspeed_zero2"):
        strategy_clips_gradients("fsdp")
    with pytest.raises(ValueError, match="choose one of"):
        build_strategy("deepspeed", accelerator="gpu", gradient_clip_val=None, precision="bf16-mixed")


def test_auto_and_ddp_on_cpu() -> None:
    assert build_strategy("auto", accelerator="cpu", gradient_clip_val=1.0, precision="32-true") == "auto"
    ddp = build_strategy("ddp", accelerator="cpu", gradient_clip_val=1.0, precision="32-true", timeout_s=60)
    assert isinstance(ddp, DDPStrategy)
    assert ddp.process_group_backend == "gloo"
    assert ddp._ddp_kwargs["find_unused_parameters"] is False
    assert ddp._timeout.total_seconds() == 60
    gpu = build_strategy("ddp", accelerator="gpu", gradient_clip_val=None, precision="bf16-mixed")
    assert gpu.process_group_backend == "nccl"
    with pytest.raises(ValueError, match="timeout_s"):
        build_strategy("ddp", accelerator="cpu", gradient_clip_val=None, precision="32-true", timeout_s=0)


def test_ignored_deepspeed_options_warn() -> None:
    with pytest.warns(UserWarning, match="only apply to DeepSpeed"):
        build_strategy("ddp", accelerator="cpu", gradient_clip_val=None, precision="32-true", offload_optimizer=True)


@pytest.mark.parametrize("name", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_on_cpu_is_an_error(name: str) -> None:
    with pytest.raises(ValueError, match="DeepSpeed needs CUDA.*ddp"):
        build_strategy(name, accelerator="cpu", gradient_clip_val=1.0, precision="bf16-mixed")


def test_deepspeed_strategy_carries_the_config() -> None:
    pytest.importorskip("deepspeed")
    strategy = build_strategy(
        "deepspeed_zero3", accelerator="cuda", gradient_clip_val=1.0, precision="bf16-mixed", timeout_s=90
    )
    assert isinstance(strategy, AtomicDeepSpeedStrategy)
    assert strategy.zero_stage_3 and strategy.config["gradient_clipping"] == 1.0
    assert strategy.config["bf16"] == {"enabled": True}
    assert strategy._timeout.total_seconds() == 90


# Atomic renames: plain filesystem logic, no deepspeed needed.


def _write_ckpt(path: Path, content: str) -> None:
    (path / "checkpoint").mkdir(parents=True)
    (path / "latest").write_text("checkpoint")
    (path / "checkpoint" / "mp_rank_00_model_states.pt").write_text(content)


def _content(path: Path) -> str:
    return (path / "checkpoint" / "mp_rank_00_model_states.pt").read_text()


def test_replace_checkpoint_new_and_existing(tmp_path: Path) -> None:
    final = tmp_path / "last.ckpt"
    tmp = tmp_checkpoint_path(final, "a1")
    assert tmp.name == "last.ckpt.tmp-a1"
    _write_ckpt(tmp, "one")
    replace_path(tmp, final)
    assert _content(final) == "one" and not tmp.exists()

    tmp = tmp_checkpoint_path(final, "b2")
    _write_ckpt(tmp, "two")
    replace_path(tmp, final)
    assert _content(final) == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_replace_checkpoint_over_a_file_or_link(tmp_path: Path) -> None:
    final = tmp_path / "last.ckpt"
    final.write_text("single-file checkpoint")
    tmp = tmp_checkpoint_path(final, "c3")
    _write_ckpt(tmp, "dir")
    replace_path(tmp, final)
    assert _content(final) == "dir"

    target = tmp_path / "epoch=0.ckpt"
    _write_ckpt(target, "target")
    link = tmp_path / "link.ckpt"
    link.symlink_to(target)
    tmp = tmp_checkpoint_path(link, "d4")
    _write_ckpt(tmp, "new")
    replace_path(tmp, link)
    assert not link.is_symlink() and _content(link) == "new"
    assert _content(target) == "target"


def test_replace_checkpoint_missing_source(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        replace_path(tmp_path / "x.tmp-1", tmp_path / "x")


def test_remove_stale_tmp_checkpoints(tmp_path: Path) -> None:
    final = tmp_path / "step=10.ckpt"
    _write_ckpt(tmp_checkpoint_path(final, "dead"), "partial")
    old = tmp_path / "step=10.ckpt.old-1234"
    _write_ckpt(old, "previous")
    _write_ckpt(tmp_checkpoint_path(tmp_path / "step=20.ckpt", "other"), "other")
    # The only complete copy is the moved-aside one: keep it.
    assert [p.name for p in remove_stale_tmp_checkpoints(final)] == ["step=10.ckpt.tmp-dead"]
    assert old.exists()
    _write_ckpt(final, "current")
    assert [p.name for p in remove_stale_tmp_checkpoints(final)] == ["step=10.ckpt.old-1234"]
    assert (tmp_path / "step=20.ckpt.tmp-other").exists()


class _FakeEngine:
    """Stands in for ``deepspeed.DeepSpeedEngine.save_checkpoint``; ``fail`` simulates a kill mid-save."""

    def __init__(self, content: str, *, fail: bool = False) -> None:
        self.content, self.fail, self.saved_to = content, fail, None

    def save_checkpoint(self, save_dir, client_state, tag, exclude_frozen_parameters) -> None:
        path = Path(save_dir)
        self.saved_to = path
        (path / tag).mkdir(parents=True)
        if self.fail:
            raise KeyboardInterrupt
        (path / tag / "mp_rank_00_model_states.pt").write_text(self.content)
        (path / "latest").write_text(tag)


def test_atomic_strategy_save_keeps_previous_on_failure(tmp_path: Path) -> None:
    pytest.importorskip("deepspeed")
    strategy = AtomicDeepSpeedStrategy(config=deepspeed_config(2, precision="bf16-mixed", gradient_clip_val=1.0))
    final = tmp_path / "last.ckpt"

    strategy.model = _FakeEngine("one")
    strategy.save_checkpoint({"global_step": 1, "state_dict": {}}, final)
    assert strategy.model.saved_to.name.startswith("last.ckpt.tmp-")
    assert _content(final) == "one"

    strategy.model = _FakeEngine("two", fail=True)
    with pytest.raises(KeyboardInterrupt):
        strategy.save_checkpoint({"global_step": 2}, final)
    assert _content(final) == "one"

    strategy.model = _FakeEngine("three")
    strategy.save_checkpoint({"global_step": 3}, str(final))
    assert _content(final) == "three"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


# Consolidation of real ZeRO checkpoints, written by deepspeed.initialize on the CPU accelerator in a subprocess
# (its own process group and accelerator choice, whatever this test session already imported).

_SAVE_ZERO_CHECKPOINTS = r"""
import sys
from pathlib import Path

import torch
import deepspeed
import deepspeed.comm.torch as ds_comm

# The shared-memory allreduce op is only for multi-rank CPU runs; skipping it avoids a C++ JIT build.
ds_comm.build_shm_op = lambda: None


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(3, 5)
        self.blocks = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.GELU(), torch.nn.Linear(7, 3))
        self.out = torch.nn.Linear(3, 3)
        self.frozen = torch.nn.Linear(3, 3)
        self.frozen.requires_grad_(False)
        self.register_buffer("stat", torch.arange(4.0))
        self.register_buffer("count", torch.tensor(7))

    def forward(self, x):
        return self.frozen(self.out(self.blocks(self.inp(x))))


class Wrapper(torch.nn.Module):
    # What Lightning < 2.1 handed to DeepSpeed: checkpoint keys carry a _forward_module. prefix.
    def __init__(self, net):
        super().__init__()
        self._forward_module = net

    def forward(self, x):
        return self._forward_module(x)


root = Path(sys.argv[1])
deepspeed.init_distributed(dist_backend="gloo")
for stage in (2, 3):
    torch.manual_seed(stage)
    net = Net()
    model = Wrapper(net) if stage == 3 else net
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    config = {
        "train_micro_batch_size_per_gpu": 4,
        "zero_allow_untested_optimizer": True,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": 1.0,
    }
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config)
    for _ in range(3):
        loss = engine(torch.randn(4, 3)).square().mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(root / f"zero{stage}.ckpt"), client_state={"global_step": 3}, tag="checkpoint")
    with deepspeed.zero.GatheredParameters(list(net.parameters())):
        reference = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save(reference, root / f"zero{stage}_reference.pt")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def zero_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("deepspeed")
    root = tmp_path_factory.mktemp("zero")
    script = root / "save_zero_checkpoints.py"
    script.write_text(_SAVE_ZERO_CHECKPOINTS)
    env = os.environ | {
        "DS_ACCELERATOR": "cpu",
        "CUDA_VISIBLE_DEVICES": "",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script), str(root)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"writing ZeRO checkpoints failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return root


@pytest.mark.parametrize("stage", [2, 3])
def test_consolidate_real_zero_checkpoint(zero_checkpoints: Path, stage: int) -> None:
    ckpt = zero_checkpoints / f"zero{stage}.ckpt"
    assert (ckpt / "latest").read_text().strip() == "checkpoint"
    reference = torch.load(zero_checkpoints / f"zero{stage}_reference.pt", weights_only=True)
    state = get_strategy(f"deepspeed_zero{stage}").consolidate(ckpt)  # consolidate_deepspeed_checkpoint
    assert sorted(state) == sorted(reference)
    for key, value in reference.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert state["count"].dtype == torch.int64
    assert all(v.dtype == torch.float32 for k, v in state.items() if k != "count")


def test_consolidate_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a folder"):
        consolidate_deepspeed_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "half.ckpt").mkdir()
    with pytest.raises(ValueError, match="no 'latest'"):
        consolidate_deepspeed_checkpoint(tmp_path / "half.ckpt")


def test_missing_deepspeed_is_a_clear_import_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("deepspeed", "deepspeed.utils.zero_to_fp32"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=r"pip install '\.\[deepspeed\]'"):
        build_strategy("deepspeed_zero2", accelerator="gpu", gradient_clip_val=1.0, precision="bf16-mixed")
    _write_ckpt(tmp_path / "x.ckpt", "content")
    with pytest.raises(ImportError, match="consolidating a DeepSpeed checkpoint needs deepspeed"):
        consolidate_deepspeed_checkpoint(tmp_path / "x.ckpt")
