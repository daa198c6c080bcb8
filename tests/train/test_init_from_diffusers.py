"""A diffusers SVD folder given as ``stage.init.path`` initialises a stage through the config (train.run)."""

from __future__ import annotations

import torch

from tests.scripts.test_export_diffusers import stage_export  # noqa: F401 - the module fixture


def test_stage_init_path_accepts_a_diffusers_folder(stage_export) -> None:  # noqa: F811
    from omegaconf import OmegaConf

    from train.builders import build_objective
    from train.run import init_source, initialise

    cfg, model, root = stage_export
    folder = root / "pipe"
    assert init_source(cfg, from_stage=None, path=str(folder), what="stage.init.from_stage") == folder
    cfg = OmegaConf.merge(cfg, {"stage": {"init": {"from_stage": None, "path": str(folder), "keep": []}}})
    torch.manual_seed(7)
    objective = build_objective(cfg)
    initialise(cfg, objective)
    original, after = model.state_dict(), objective.export_module().state_dict()
    differ = [k for k in after if not torch.equal(after[k], original[k])]
    # Everything came from the folder except the 6 text-tower leftovers diffusers does not carry.
    assert 0 < len(differ) <= 6 and all(".open_clip.model." in k for k in differ), differ[:3]
