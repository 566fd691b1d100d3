"""Rebuilding the calibration settings of a run from run.json's threshold (RUN_DIR without config.toml)."""

from __future__ import annotations

import numpy as np
import pytest

from export.run_dir import ExportError, settings_from_threshold
from trainer.calibration import calibrate

SCORES = np.random.default_rng(0).exponential(size=3000)


@pytest.mark.parametrize(
    ("method", "target_far", "params", "rebuilt"),
    [
        ("pot", 0.01, {"init_quantile": 0.9}, {"init_quantile": 0.9}),
        ("gev", 0.01, {"block_size": 20}, {"block_size": 20}),
        ("percentile", 0.02, {}, {}),  # q = 1 - rate: derived
        ("percentile", 0.02, {"q": 0.97}, {}),  # a given q is recorded as rate 1 - q: same threshold
        ("mad", 0.01, {}, {}),  # k came from the target rate: the rate drives it again
        ("mad", 0.01, {"k": 4.0}, {"k": 4.0}),
        ("sigma", 0.01, {"k": 2.5}, {"k": 2.5}),
    ],
)
def test_settings_rebuilt_from_the_threshold_reproduce_it(
    method: str, target_far: float, params: dict, rebuilt: dict
) -> None:
    spec = calibrate(SCORES, method, target_far, **params).to_dict()
    settings = settings_from_threshold(spec)
    assert settings.method == method
    assert settings.params == pytest.approx(rebuilt)
    again = calibrate(SCORES, settings.method, settings.target_far, **settings.params).to_dict()
    assert again["value"] == pytest.approx(spec["value"], rel=1e-9)
    assert again["target_false_alarm_rate"] == spec["target_false_alarm_rate"]


def test_unknown_threshold_method_is_named() -> None:
    with pytest.raises(ExportError, match="threshold -> method 'magic'"):
        settings_from_threshold({"method": "magic", "params": {}, "value": 1.0})


def test_a_threshold_that_is_not_a_table_is_named() -> None:
    with pytest.raises(ExportError, match=r"run\.json: threshold must be a table"):
        settings_from_threshold("x")  # type: ignore[arg-type]


def test_a_threshold_margin_is_kept_apart_from_the_method_inputs() -> None:
    from trainer.calibration import ThresholdSpec, with_margin

    spec = with_margin(calibrate(SCORES, "percentile", 0.01, q=0.99), 1.5).to_dict()
    assert spec["params"] == {"q": 0.99, "margin": 1.5}
    assert spec["target_false_alarm_rate"] is None  # margin x quantile aims at no rate
    settings = settings_from_threshold(spec)
    assert (settings.method, settings.params, settings.margin) == ("percentile", {"q": 0.99}, 1.5)
    again = with_margin(calibrate(SCORES, settings.method, settings.target_far, **settings.params),
                        settings.margin)
    assert again.value == spec["value"] == 1.5 * float(np.quantile(SCORES, 0.99))
    assert settings_from_threshold(calibrate(SCORES, "percentile", 0.01).to_dict()).margin == 1.0
    plain = ThresholdSpec("percentile", {"q": 0.99}, 2.0, 0.01)
    assert with_margin(plain, 1.0) is plain
    with pytest.raises(ExportError, match="threshold -> params -> margin must be a positive number"):
        settings_from_threshold({"method": "percentile", "params": {"q": 0.99, "margin": -1}, "value": 1.0})
