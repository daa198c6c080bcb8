"""DeepSpeed ZeRO-2 on one GPU (marker ``gpu``): manual optimization in bf16, atomic save, fp32 consolidation."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from train.strategies import consolidate_deepspeed_checkpoint
from train.strategy_registry import build_strategy, strategy_clips_gradients

pytestmark = pytest.mark.gpu

NAME = "deepspeed_zero2"
CLIP = 1.0


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))
        self.frozen = torch.nn.Linear(1, 1)
        self.frozen.requires_grad_(False)
        self.register_buffer("seen", torch.zeros(()))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.frozen(self.net(x)).float(), y.float())
        opt.zero_grad()
        self.manual_backward(loss)
        if not strategy_clips_gradients(NAME):
            self.clip_gradients(opt, gradient_clip_val=CLIP, gradient_clip_algorithm="norm")
        opt.step()
        self.seen += 1
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.net.parameters(), lr=1e-2)


def test_zero2_manual_optimization_save_and_consolidate(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    pytest.importorskip("deepspeed")
    torch.manual_seed(0)
    module = _Tiny()
    initial = {k: v.detach().clone() for k, v in module.state_dict().items()}
    data = TensorDataset(torch.randn(24, 8), torch.randn(24, 1))
    strategy = build_strategy(NAME, accelerator="gpu", precision="bf16-mixed", gradient_clip_val=CLIP)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=strategy,
        precision="bf16-mixed",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(data, batch_size=4))
    assert trainer.global_step == 3
    assert trainer.model.gradient_clipping() == CLIP
    assert trainer.strategy.config["bf16"] == {"enabled": True}

    ckpt = tmp_path / "final.ckpt"
    trainer.save_checkpoint(ckpt)
    assert (ckpt / "latest").is_file()
    assert sorted(p.name for p in tmp_path.glob("final.ckpt*")) == ["final.ckpt"]

    state = consolidate_deepspeed_checkpoint(ckpt)
    live = module.state_dict()
    assert sorted(state) == sorted(live)
    assert all(v.dtype == torch.float32 for v in state.values())
    for key, value in live.items():
        # DeepSpeed's bf16 module is the fp32 master weights rounded to bf16.
        torch.testing.assert_close(state[key].to(value.dtype), value.detach().cpu(), rtol=0, atol=0, msg=key)
    assert not torch.equal(state["net.0.weight"], initial["net.0.weight"])
    torch.testing.assert_close(state["frozen.weight"], initial["frozen.weight"].float(), rtol=1e-2, atol=1e-2)
    assert state["seen"].item() == 3

    fresh = _Tiny()
    fresh.load_state_dict(state, strict=True)
