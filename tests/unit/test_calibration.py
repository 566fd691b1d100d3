"""Threshold calibration against distributions whose quantiles are known in closed form."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from trainer.calibration import (
    MIN_SCORES,
    CalibrationError,
    ThresholdSpec,
    calibrate,
    pot_excesses,
    pot_quantile,
    score_quantiles,
    scores_needed,
)


def exponential_scores(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).exponential(scale=1.0, size=n)


def test_percentile_is_the_empirical_quantile() -> None:
    scores = np.arange(1, 1001, dtype=float)  # 1..1000
    spec = calibrate(scores, "percentile", target_far=0.01)
    assert spec.value == pytest.approx(np.quantile(scores, 0.99))
    assert spec.target_false_alarm_rate == pytest.approx(0.01)
    assert (scores > spec.value).sum() == 10


def test_percentile_explicit_q_overrides_target() -> None:
    spec = calibrate(np.arange(100, dtype=float), "percentile", q=0.9)
    assert spec.params["q"] == 0.9
    assert spec.target_false_alarm_rate == pytest.approx(0.1)


def test_percentile_refuses_quantile_beyond_the_data() -> None:
    with pytest.raises(CalibrationError, match="needs at least 1000 scores"):
        calibrate(np.arange(100, dtype=float), "percentile", target_far=1e-3)


def test_mad_on_constructed_data() -> None:
    # median 10, absolute deviations 0,1,1,2,2 -> MAD 1
    scores = np.array([10, 9, 11, 8, 12] * 4, dtype=float)
    spec = calibrate(scores, "mad", k=3.0)
    assert spec.value == pytest.approx(10 + 3 * 1.4826 * 1.0)
    assert spec.target_false_alarm_rate is None


def test_sigma_default_k_is_the_gaussian_quantile() -> None:
    scores = np.array([1.0, 3.0] * 10)  # mean 2
    spec = calibrate(scores, "sigma", target_far=0.0013498980316301)  # 3-sigma one-sided
    assert spec.params["k"] == pytest.approx(3.0, abs=1e-6)
    assert spec.value == pytest.approx(2 + 3 * np.std(scores, ddof=1), rel=1e-6)
    assert spec.target_false_alarm_rate == pytest.approx(0.0013498980316301)


def test_sigma_on_gaussian_recovers_the_quantile() -> None:
    scores = np.random.default_rng(1).normal(5.0, 2.0, size=200_000)
    spec = calibrate(scores, "sigma", target_far=1e-3)
    assert spec.value == pytest.approx(5.0 + 2.0 * 3.0902, rel=0.01)


def test_pot_on_exponential_recovers_the_true_quantile() -> None:
    scores = exponential_scores(100_000)
    spec = calibrate(scores, "pot", target_far=1e-3)
    true = math.log(1000.0)  # P(X > x) = exp(-x)
    assert spec.value == pytest.approx(true, rel=0.04)
    assert abs(spec.params["gamma"]) < 0.1  # exponential tail: gamma ~ 0
    assert spec.params["n_excesses"] == pytest.approx(2000, abs=2)


def test_pot_extrapolates_beyond_the_sample() -> None:
    # 2,000 scores cannot show the 1e-5 quantile empirically; POT extrapolates the exponential tail
    scores = exponential_scores(20_000, seed=3)
    spec = calibrate(scores, "pot", target_far=1e-5, init_quantile=0.95)
    assert spec.value == pytest.approx(math.log(1e5), rel=0.08)
    assert spec.value > scores.max()


def test_pot_on_pareto_tail() -> None:
    # Lomax (Pareto II) with shape a: P(X > x) = (1 + x) ** -a, a GPD with gamma = 1/a
    a = 4.0
    scores = np.random.default_rng(2).pareto(a, size=200_000)
    spec = calibrate(scores, "pot", target_far=1e-3)
    true = 1e-3 ** (-1 / a) - 1
    assert spec.value == pytest.approx(true, rel=0.06)
    assert spec.params["gamma"] == pytest.approx(1 / a, abs=0.08)


def test_pot_quantile_gamma_zero_limit_is_continuous() -> None:
    exact = pot_quantile(1.0, 0.0, 2.0, q=1e-3, n=10_000, n_t=200)
    near = pot_quantile(1.0, 1e-4, 2.0, q=1e-3, n=10_000, n_t=200)
    assert near == pytest.approx(exact, rel=1e-3)


def test_gev_on_gumbel_maxima() -> None:
    # maxima of 50 exponentials are Gumbel; the per-window 1e-3 quantile of the exponential is ln(1000)
    scores = exponential_scores(200_000, seed=4)
    spec = calibrate(scores, "gev", target_far=1e-3, block_size=50)
    assert spec.value == pytest.approx(math.log(1000.0), rel=0.04)
    assert abs(spec.params["shape"]) < 0.1
    assert spec.params["n_blocks"] == 4000


def test_gev_needs_enough_blocks() -> None:
    with pytest.raises(CalibrationError, match="need at least 10"):
        calibrate(exponential_scores(400), "gev", block_size=50)


@pytest.mark.parametrize("method", ["percentile", "mad", "sigma", "gev", "pot"])
def test_non_finite_scores_are_named(method: str) -> None:
    scores = exponential_scores(5000)
    scores[17] = np.nan
    with pytest.raises(CalibrationError, match="first at index 17"):
        calibrate(scores, method)


@pytest.mark.parametrize("method", ["percentile", "mad", "sigma", "gev", "pot"])
def test_too_few_scores(method: str) -> None:
    with pytest.raises(CalibrationError, match="at least 10 scores"):
        calibrate([1.0, 2.0, 3.0], method)


def test_bad_method_and_params() -> None:
    scores = exponential_scores(5000)
    with pytest.raises(CalibrationError, match="unknown calibration method 'evt'"):
        calibrate(scores, "evt")
    with pytest.raises(CalibrationError, match=r"unknown parameter\(s\) \['kk'\]"):
        calibrate(scores, "mad", kk=3)
    with pytest.raises(CalibrationError, match="k must be a positive number"):
        calibrate(scores, "sigma", k=-1)
    with pytest.raises(CalibrationError, match="target_far must be in"):
        calibrate(scores, "pot", target_far=1.5)
    with pytest.raises(CalibrationError, match="block_size must be an integer"):
        calibrate(scores, "gev", block_size=2.5)
    with pytest.raises(CalibrationError, match="not beyond the initial quantile"):
        calibrate(scores, "pot", target_far=0.1, init_quantile=0.98)


def test_constant_scores_are_rejected() -> None:
    with pytest.raises(CalibrationError, match="median absolute deviation is 0"):
        calibrate(np.ones(100), "mad")
    with pytest.raises(CalibrationError, match="standard deviation 0"):
        calibrate(np.ones(100), "sigma")


def test_spec_round_trips_through_json() -> None:
    spec = calibrate(exponential_scores(20_000), "pot", target_far=1e-3)
    again = ThresholdSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec


def test_spec_from_dict_rejects_bad_input() -> None:
    with pytest.raises(CalibrationError, match=r"unknown key\(s\) \['valu'\]"):
        ThresholdSpec.from_dict({"method": "pot", "valu": 1.0})
    with pytest.raises(CalibrationError, match="method 'x' is not one of"):
        ThresholdSpec.from_dict({"method": "x", "value": 1.0})
    with pytest.raises(CalibrationError, match="value must be a finite number"):
        ThresholdSpec.from_dict({"method": "pot", "value": float("inf")})


def test_score_quantiles_keys_and_values() -> None:
    scores = np.arange(0, 1001, dtype=float)
    quantiles = score_quantiles(scores)
    assert list(quantiles) == ["0.5", "0.9", "0.99", "0.999"]
    assert quantiles["0.5"] == 500.0
    assert quantiles["0.99"] == pytest.approx(990.0)


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95, 0.98, 0.99, 0.995])
def test_pot_excesses_is_numpys_count_above_the_quantile(level: float) -> None:
    for n in range(2, 1200):
        scores = np.arange(n, dtype=np.float64)
        assert pot_excesses(n, level) == np.count_nonzero(scores > np.quantile(scores, level)), n


@pytest.mark.parametrize(
    ("method", "target_far", "params"),
    [("pot", 0.01, {}), ("pot", 0.001, {}), ("pot", 0.01, {"init_quantile": 0.9}),
     ("pot", 0.01999, {}),  # just inside init_quantile 0.98: failing counts above the first that works
     ("percentile", 0.01, {}), ("percentile", 0.1, {}), ("percentile", 0.01, {"q": 0.999}),
     ("gev", 0.01, {"block_size": 20}), ("mad", 0.01, {}), ("sigma", 0.01, {})],
)
def test_scores_needed_is_the_count_from_which_every_count_works(
        method: str, target_far: float, params: dict) -> None:
    """`fit` refuses fewer calibration windows than this before training; at this count and above the
    method works on distinct scores, and one fewer (when above the general minimum of 10) it refuses."""
    needed = scores_needed(method, target_far, params)
    rng = np.random.default_rng(0)
    counts = [*range(needed, needed + 40), *rng.integers(needed, 4 * needed + 3000, size=30)]
    for n in counts:
        calibrate(rng.exponential(size=int(n)), method, target_far, **params)
    if needed > MIN_SCORES:
        with pytest.raises(CalibrationError):
            calibrate(rng.exponential(size=needed - 1), method, target_far, **params)


def test_scores_needed_refuses_a_pot_target_not_beyond_its_initial_quantile() -> None:
    for target_far in (0.02, 0.0201, 0.05):
        with pytest.raises(CalibrationError, match=r"not beyond the initial quantile 0.98; lower "
                                                   r"init_quantile below 1 - target_far"):
            scores_needed("pot", target_far, {})
    assert scores_needed("pot", 0.05, {"init_quantile": 0.9}) == 92
    assert scores_needed("pot", 0.01, {}) == 452  # the count docs/training.md gives


def test_a_degenerate_pot_fit_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    """Two humps, the upper one (2 % of the scores, all about 10) filling the tail above the initial quantile:
    the Pareto fit's shape goes below -1 and its tail ends at the largest score, so the threshold is logged as
    unreliable. An exponential tail fits regularly and is not."""
    rng = np.random.default_rng(0)
    humps = np.concatenate([rng.exponential(1.0, 4900), 10 + rng.uniform(0, 0.01, 100)])
    caplog.set_level(logging.WARNING, logger="trainer.calibration")
    spec = calibrate(humps, "pot", 0.01)
    assert spec.params["gamma"] < -1
    assert "the Pareto tail fit is degenerate" in caplog.text
    caplog.clear()
    assert calibrate(exponential_scores(5000), "pot", 0.01).params["gamma"] > -1
    assert "degenerate" not in caplog.text
