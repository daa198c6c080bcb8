"""CaptionPicker: configured probabilities, renormalised over the fields present, then the fallbacks."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from data.captions import CaptionPicker

FULL = {"captions": {"coca": "a dog", "vblip": "a dog runs", "llm": "a dog runs on grass"}, "caption": "alt"}


def _frequencies(picker: CaptionPicker, meta, n: int = 8000) -> dict[str, float]:
    rng = np.random.default_rng(0)
    counts = Counter(picker.pick(meta, rng=rng).source for _ in range(n))
    return {k: v / n for k, v in counts.items()}


def test_svd_probabilities():
    freq = _frequencies(CaptionPicker(), FULL)
    assert set(freq) == {"coca", "vblip", "llm"}
    assert freq["coca"] == pytest.approx(0.5, abs=0.02)
    assert freq["vblip"] == pytest.approx(0.25, abs=0.02) and freq["llm"] == pytest.approx(0.25, abs=0.02)


def test_renormalised_when_a_field_is_missing():
    meta = {"captions": {"coca": "a dog", "llm": "a dog runs on grass"}}
    freq = _frequencies(CaptionPicker(), meta)
    assert set(freq) == {"coca", "llm"} and freq["coca"] == pytest.approx(2 / 3, abs=0.02)


def test_top_level_fields_and_text_values():
    picker = CaptionPicker()
    choice = picker.pick({"vblip": "  a cat jumps  ", "coca": "", "llm": None}, rng=np.random.default_rng(0))
    assert (choice.text, choice.source) == ("a cat jumps", "vblip")


def test_seeded_rng_reproduces_the_choices():
    picker = CaptionPicker()
    a = [picker.pick(FULL, rng=rng).source for rng in [np.random.default_rng(3)] for _ in range(50)]
    b = [picker.pick(FULL, rng=rng).source for rng in [np.random.default_rng(3)] for _ in range(50)]
    assert a == b


def test_fallbacks_in_order():
    picker = CaptionPicker()
    rng = np.random.default_rng(0)
    assert picker.pick({"caption": "alt text"}, txt="from txt", rng=rng).source == "caption"
    choice = picker.pick({"other": 1}, txt=" from txt\n", rng=rng)
    assert (choice.text, choice.source) == ("from txt", "txt")
    assert picker.pick(None, txt="from txt", rng=rng).source == "txt"
    none = picker.pick({}, txt="   ", rng=rng)
    assert (none.text, none.source) == ("", "none")
    assert CaptionPicker(use_txt=False).pick({}, txt="x", rng=rng).source == "none"


def test_list_valued_caption_draws_one():
    picker = CaptionPicker(probabilities={"coca": 1.0})
    rng = np.random.default_rng(0)
    texts = {picker.pick({"captions": {"coca": ["a", "b", "c"]}}, rng=rng).text for _ in range(60)}
    assert texts == {"a", "b", "c"}


def test_zero_probability_field_is_never_drawn():
    picker = CaptionPicker(probabilities={"coca": 1.0, "llm": 0.0})
    assert _frequencies(picker, FULL, n=200) == {"coca": 1.0}
    assert picker.pick({"llm": "only llm"}, rng=np.random.default_rng(0)).source == "none"


@pytest.mark.parametrize("probabilities", [{"coca": -0.1}, {"coca": float("nan")}, {"coca": 0.0, "llm": 0.0}])
def test_bad_probabilities(probabilities):
    with pytest.raises(ValueError, match="probabilit"):
        CaptionPicker(probabilities=probabilities)
