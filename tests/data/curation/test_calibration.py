"""The curation on the real calibration set (../shared/calibration: real footage and photos with exact ground
truth): the figures reached are pinned, so a change that loses accuracy fails here."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from data.curation.config import AnnotateConfig
from data.curation.cuts import CutConfig
from data.curation.scoring import evaluate, text_area_bound

REPO = Path(__file__).resolve().parents[3]
CALIBRATION = REPO.parent / "shared" / "calibration"
pytestmark = pytest.mark.skipif(
    not (CALIBRATION / "cuts" / "truth.json").is_file(), reason=f"no calibration set at {CALIBRATION}"
)


@pytest.fixture(scope="module")
def default_scores() -> dict:
    threshold = text_area_bound(REPO / "conf" / "curate" / "filters" / "high_quality.yaml")
    return evaluate(CALIBRATION, AnnotateConfig(), text_threshold=threshold)


def test_calibration_cuts_at_the_default(default_scores: dict) -> None:
    s = default_scores
    assert s["false_transitions"] == 0, s["false_transition_list"]
    assert s["cut_f1"] >= 0.95 and s["cut_recall"] == 1.0, s["cuts_per_file"]
    assert s["recall_per_kind"] == {"crossfade": 1.0, "cut": 1.0, "fade": 1.0}


def test_calibration_text_at_the_default(default_scores: dict) -> None:
    s = default_scores
    assert s["text_accuracy"] == 1.0, s["per_image"]
    assert s["text_area_mae"] <= 0.05, s["per_image"]


def test_calibration_motion_order_at_the_default_and_at_2fps(default_scores: dict) -> None:
    s = default_scores
    assert s["motion_order_ok"] and s["motion_kendall_tau"] == 1.0, s["motion_scores"]
    assert s["motion_order_ok_2fps"] and s["motion_kendall_tau_2fps"] == 1.0, s["motion_scores_2fps"]


def test_calibration_cuts_of_the_learned_detector() -> None:
    """TransNetV2 (annotate.cuts.detector=transnetv2) after the same confirmation: every transition, nothing false
    (its one raw false detection, on hologram flicker, is rejected as the same picture before and after)."""
    cfg = dataclasses.replace(AnnotateConfig(), cuts=CutConfig(detector="transnetv2"), text_area=False)
    s = evaluate(CALIBRATION, cfg, text_threshold=0.01)
    assert s["false_transitions"] == 0 and s["cut_f1"] == 1.0, s["cuts_per_file"]


def test_calibration_cascade_without_confirmation_shows_what_it_fixes() -> None:
    """Turning the confirmation off brings back the in-shot false transitions (cars passing, flicker, exposure),
    so the pinned zero above is the confirmation's doing."""
    cuts = CutConfig(same_shot_similarity=1.0, min_monotonicity=0.0)
    s = evaluate(CALIBRATION, dataclasses.replace(AnnotateConfig(), cuts=cuts, text_area=False), text_threshold=0.01)
    assert s["false_transitions"] >= 8 and s["cut_recall"] == 1.0
