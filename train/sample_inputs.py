"""The conditions of the training-time sample and evaluation callbacks (``logger.samples`` / ``logger.evaluation``),
checked against the stage's task when the config is validated (``train.config.validate``), before anything is built.

An image-conditioned task takes as many images per sample as it conditions on frames
(``TaskSpec.cond_frame_indices``): one path per ``images`` entry for i2v and mv, a pair ``first.png|last.png`` per
entry for interp (the first and last frame; both files of a pair the same size, as ``scripts/sample.py
--interpolate A B`` needs). A task with an ``elevation`` input (mv) needs the ``elevation`` setting. Text tasks
read ``prompts`` and ignore ``images``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from train.tasks import get_task

PAIR_SEPARATOR = "|"
CALLBACK_NODES = ("samples", "evaluation")  # logger.<node>


def image_groups(entries: Iterable[str], *, task: str, key: str) -> list[tuple[str, ...]]:
    """``images`` entries of a ``task`` callback -> one tuple of paths per sample (two for interp, else one);
    ValueError naming ``key`` and the fix for an entry of the wrong arity or a missing file."""
    spec = get_task(task)
    k = len(spec.cond_frame_indices)
    groups = []
    for entry in entries:
        paths = tuple(p.strip() for p in str(entry).split(PAIR_SEPARATOR))
        if len(paths) != k or not all(paths):
            if k == 1:
                fix = (
                    f"give one image path per entry ('A.png{PAIR_SEPARATOR}B.png' pairs are for frame interpolation, "
                    "task interp)"
                )
            else:
                fix = f"give each entry as the first and last frame, e.g. {key}=['first.png{PAIR_SEPARATOR}last.png']"
            raise ValueError(
                f"{key} entry {entry!r} names {len(paths)} image(s); the {task} task conditions on {k} per sample: "
                f"{fix}"
            )
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise ValueError(
                f"{key} entry {entry!r}: no image file at {missing[0]}; give the paths of PNG / JPEG images"
            )
        groups.append(paths)
    return groups


def check_sample_inputs(cfg: Any) -> None:
    """ValueError for a sample or evaluation callback of a diffusion stage whose inputs do not fit its task."""
    if cfg.stage.objective != "diffusion":
        return
    task = cfg.conditioner.task
    spec = get_task(task)
    for name in CALLBACK_NODES:
        node = cfg.logger[name]
        if node.every_n_steps <= 0:
            continue
        if spec.image_conditioned:
            image_groups(node.images, task=task, key=f"logger.{name}.images")
        if "elevation" in spec.input_keys and node.elevation is None:
            raise ValueError(
                f"logger.{name}.elevation is unset; the {task} task samples at a camera elevation: set "
                f"logger.{name}.elevation=DEG (e.g. 10) or logger.{name}.every_n_steps=0"
            )
