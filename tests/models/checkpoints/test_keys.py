"""The one key check (``models.checkpoints.keys``) and the messages its callers build from it."""

from __future__ import annotations

import torch

from models.checkpoints.keys import add_prefix, diff_keys, strip_prefix, with_prefix


def _sd(**shapes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return {k.replace("__", "."): torch.zeros(s) for k, s in shapes.items()}


def test_diff_keys_finds_unexpected_missing_and_shapes() -> None:
    source = _sd(b__w=(2,), a__w=(3,), c__w=(1,), z__w=(4,))
    target = _sd(a__w=(3,), c__w=(2,), d__w=(1,), b__b=(1,), z__w=(5,))
    diff = diff_keys(source, target, prefix="p.")
    assert diff and diff.unexpected == ["b.w"] and diff.missing == ["b.b", "d.w"]
    # Shape lines follow the source's order and carry the prefix.
    assert diff.shapes == ["p.c.w: source (1,) vs target (2,)", "p.z.w: source (4,) vs target (5,)"]
    assert diff.listed("unexpected", "unknown keys") == "1 unknown keys ['p.b.w']"
    assert diff.listed("missing") == "2 missing keys ['p.b.b', 'p.d.w']"
    assert diff.listed("shapes").startswith("2 shape mismatches ['p.c.w: source (1,) vs target (2,)'")
    assert not diff_keys(target, dict(target))


def test_listed_shows_the_first_five_keys_and_three_shapes() -> None:
    source = {f"k{i}": torch.zeros(i + 1) for i in range(8)}
    diff = diff_keys(source, {f"k{i}": torch.zeros(1) for i in range(8)} | {f"m{i}": torch.zeros(1) for i in range(7)})
    assert diff.listed("missing") == f"7 missing keys {[f'm{i}' for i in range(5)]}"
    assert diff.listed("shapes").startswith("7 shape mismatches ") and diff.listed("shapes").count("vs") == 3


def test_absent_ok_keys_are_reported_apart() -> None:
    target = _sd(a=(1,), label_emb__w=(2,), label_emb__b=(2,))
    diff = diff_keys(_sd(a=(1,)), target, sides=("file", "model"), absent_ok=lambda k: k.startswith("label_emb."))
    assert not diff and diff.absent == ["label_emb.b", "label_emb.w"] and diff.missing == []
    diff = diff_keys(_sd(a=(2,)), target, sides=("file", "model"))
    assert diff.shapes == ["a: file (2,) vs model (1,)"] and len(diff.missing) == 2


def test_keys_only_comparison_ignores_shapes() -> None:
    diff = diff_keys(_sd(a=(3, 3), b=(1,)), dict.fromkeys(["a", "c"]), compare_shapes=False)
    assert diff.unexpected == ["b"] and diff.missing == ["c"] and diff.shapes == []


def test_prefix_helpers_round_trip() -> None:
    state = _sd(x__a=(1,), y__b=(2,))
    assert strip_prefix(state, "x.") == {"a": state["x.a"]}
    assert add_prefix("m.", strip_prefix(state, "y.")) == {"m.b": state["y.b"]}
    assert with_prefix("p.", ["a", "b"]) == ["p.a", "p.b"]
