"""Threshold calibration on anomaly scores of normal windows (numpy + scipy only, no torch).

Calibrate on scores of normal windows that training never saw. Each method turns those scores into one
threshold and says how: a `ThresholdSpec` (method, fitted parameters, value, target false-alarm rate per
window) that the exporter writes into the bundle manifest and the agent reads back.

Methods:

- ``percentile``: the empirical ``q`` quantile (``q = 1 - target_far`` unless given).
- ``mad``: ``median + k * 1.4826 * MAD`` (robust sigma); ``k`` defaults to the Gaussian quantile of
  ``1 - target_far``.
- ``sigma``: ``mean + k * std``; ``k`` as for ``mad``.
- ``gev``: generalized extreme value distribution fitted (MLE, ``scipy.stats.genextreme``) on the maxima of
  non-overlapping blocks of ``block_size`` (default 50) scores; the threshold is the GEV quantile at the
  block-level exceedance probability ``1 - (1 - target_far) ** block_size`` that matches ``target_far`` per
  window.
- ``pot``: peaks over threshold as initialised by SPOT (Siffer et al., KDD 2017): an initial threshold ``t``
  at the ``init_quantile`` (default 0.98) empirical quantile, a generalized Pareto fit (MLE, ``loc=0``) on the
  excesses over ``t``, then ``z_q = t + sigma/gamma * ((q * n / N_t) ** -gamma - 1)`` with ``q = target_far``
  (``z_q = t - sigma * ln(q * n / N_t)`` when ``gamma`` is about 0).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

log = logging.getLogger(__name__)

MAD_TO_SIGMA = 1.4826  # MAD of a Gaussian times this is its standard deviation
GAMMA_ZERO = 1e-6  # |gamma| below this is treated as the exponential tail (gamma -> 0 limit)
MIN_SCORES = 10
MIN_BLOCKS = 10
MIN_EXCESSES = 10


def _real(value: Any) -> float | None:
    """`value` as a float when it is a real number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


class CalibrationError(ValueError):
    """The scores or parameters cannot give a meaningful threshold; the message says which and why."""


@dataclass(frozen=True)
class ThresholdSpec:
    """A calibrated threshold and how it was obtained.

    `params` holds the method's inputs and fitted parameters (plain floats/ints), `value` the threshold on
    the score (a window with ``score > value`` is anomalous), `target_false_alarm_rate` the per-window rate
    the method aimed at (None when the method was given an explicit multiplier or quantile that does not
    correspond to a rate under its own assumptions).
    """

    method: str
    params: dict[str, float] = field(default_factory=dict)
    value: float = 0.0
    target_false_alarm_rate: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the bundle manifest's `threshold` object)."""
        return {
            "method": self.method,
            "params": dict(self.params),
            "value": float(self.value),
            "target_false_alarm_rate": self.target_false_alarm_rate,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ThresholdSpec:
        """Parse `to_dict()` output; unknown or missing keys and bad values raise `CalibrationError`."""
        allowed = {"method", "params", "value", "target_false_alarm_rate"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise CalibrationError(f"threshold spec: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"method", "value"} - set(data))
        if missing:
            raise CalibrationError(f"threshold spec: missing key(s) {missing}")
        method = data["method"]
        if method not in METHODS:
            raise CalibrationError(f"threshold spec: method {method!r} is not one of {sorted(METHODS)}")
        params = data.get("params", {})
        if not isinstance(params, Mapping):
            raise CalibrationError(f"threshold spec: params must be a table, got {params!r}")
        value = _real(data["value"])
        if value is None or not math.isfinite(value):
            raise CalibrationError(f"threshold spec: value must be a finite number, got {data['value']!r}")
        raw_far = data.get("target_false_alarm_rate")
        far = _real(raw_far)
        if raw_far is not None and (far is None or not 0 < far < 1):
            raise CalibrationError(
                f"threshold spec: target_false_alarm_rate must be in (0, 1), got {raw_far!r}"
            )
        return cls(
            method=method,
            params=dict(params),
            value=float(value),
            target_false_alarm_rate=None if far is None else float(far),
        )


def _as_scores(scores: Sequence[float] | np.ndarray, minimum: int) -> np.ndarray:
    array = np.asarray(scores, dtype=np.float64)
    if array.ndim != 1:
        raise CalibrationError(f"scores must be 1-D, got shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array))
    if bad.size:
        raise CalibrationError(
            f"{bad.size} non-finite score(s), first at index {bad[0]} (value {array[bad[0]]})"
        )
    if array.size < minimum:
        raise CalibrationError(f"need at least {minimum} scores to calibrate, got {array.size}")
    return array


def _check_rate(name: str, rate: Any) -> float:
    value = _real(rate)
    if value is None or not 0 < value < 1:
        raise CalibrationError(f"{name} must be in (0, 1), got {rate!r}")
    return value


def _multiplier(params: Mapping[str, Any], target_far: float) -> tuple[float, float | None]:
    """`k` from params, or the Gaussian one-sided quantile of `target_far` (then the rate is the target)."""
    if "k" in params:
        k = _real(params["k"])
        if k is None or not math.isfinite(k) or k <= 0:
            raise CalibrationError(f"parameter k must be a positive number, got {params['k']!r}")
        return k, None
    return float(stats.norm.isf(target_far)), target_far


def _reject_unknown(method: str, params: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise CalibrationError(
            f"method {method!r}: unknown parameter(s) {unknown}; allowed: {sorted(allowed)}"
        )


def _percentile(scores: np.ndarray, target_far: float, params: Mapping[str, Any]) -> ThresholdSpec:
    _reject_unknown("percentile", params, {"q"})
    if "q" in params:
        q = _check_rate("parameter q (quantile in (0, 1))", params["q"])
        far = 1.0 - q
    else:
        far = target_far
        q = 1.0 - far
    if scores.size * (1.0 - q) < 1.0:
        raise CalibrationError(
            f"method 'percentile': the {q:g} quantile needs at least {math.ceil(1.0 / (1.0 - q))} scores "
            f"to be observed once, got {scores.size}; use 'pot' or 'gev' to extrapolate"
        )
    value = float(np.quantile(scores, q))
    return ThresholdSpec("percentile", {"q": q}, value, far)


def _mad(scores: np.ndarray, target_far: float, params: Mapping[str, Any]) -> ThresholdSpec:
    _reject_unknown("mad", params, {"k"})
    k, far = _multiplier(params, target_far)
    median = float(np.median(scores))
    mad = float(np.median(np.abs(scores - median)))
    if mad == 0.0:
        raise CalibrationError(
            "method 'mad': the median absolute deviation is 0 (over half the scores equal)"
        )
    value = median + k * MAD_TO_SIGMA * mad
    return ThresholdSpec("mad", {"k": k, "median": median, "mad": mad}, value, far)


def _sigma(scores: np.ndarray, target_far: float, params: Mapping[str, Any]) -> ThresholdSpec:
    _reject_unknown("sigma", params, {"k"})
    k, far = _multiplier(params, target_far)
    mean = float(scores.mean())
    std = float(scores.std(ddof=1))
    if std == 0.0:
        raise CalibrationError("method 'sigma': all scores are equal (standard deviation 0)")
    return ThresholdSpec("sigma", {"k": k, "mean": mean, "std": std}, mean + k * std, far)


def _gev(scores: np.ndarray, target_far: float, params: Mapping[str, Any]) -> ThresholdSpec:
    _reject_unknown("gev", params, {"block_size"})
    raw_block = params.get("block_size", 50)
    if isinstance(raw_block, bool) or not isinstance(raw_block, numbers.Integral) or int(raw_block) < 2:
        raise CalibrationError(f"method 'gev': block_size must be an integer >= 2, got {raw_block!r}")
    block = int(raw_block)
    n_blocks = scores.size // block
    if n_blocks < MIN_BLOCKS:
        raise CalibrationError(
            f"method 'gev': {scores.size} scores make {n_blocks} blocks of {block}; need at least "
            f"{MIN_BLOCKS} (more scores or a smaller block_size)"
        )
    maxima = scores[: n_blocks * block].reshape(n_blocks, block).max(axis=1)
    if np.ptp(maxima) == 0.0:
        raise CalibrationError("method 'gev': all block maxima are equal; nothing to fit")
    shape, loc, scale = (float(v) for v in stats.genextreme.fit(maxima))
    block_rate = 1.0 - (1.0 - target_far) ** block
    value = float(stats.genextreme.isf(block_rate, shape, loc=loc, scale=scale))
    if not math.isfinite(value):
        raise CalibrationError(f"method 'gev': the fitted quantile is not finite (shape {shape:g})")
    fitted: dict[str, float] = {
        "block_size": block,
        "n_blocks": n_blocks,
        "shape": float(shape),
        "loc": float(loc),
        "scale": float(scale),
        "block_exceedance": block_rate,
    }
    return ThresholdSpec("gev", fitted, value, target_far)


def pot_quantile(t: float, gamma: float, sigma: float, *, q: float, n: int, n_t: int) -> float:
    """SPOT's extreme quantile: the score exceeded with probability `q` given a GPD tail over `t`."""
    ratio = q * n / n_t
    if abs(gamma) < GAMMA_ZERO:
        return t - sigma * math.log(ratio)
    return t + sigma / gamma * (ratio ** (-gamma) - 1.0)


def _pot(scores: np.ndarray, target_far: float, params: Mapping[str, Any]) -> ThresholdSpec:
    _reject_unknown("pot", params, {"init_quantile"})
    level = _check_rate("method 'pot': init_quantile", params.get("init_quantile", 0.98))
    t = float(np.quantile(scores, level))
    excesses = scores[scores > t] - t
    n, n_t = scores.size, excesses.size
    if n_t < MIN_EXCESSES:
        raise CalibrationError(
            f"method 'pot': only {n_t} score(s) exceed the initial threshold {t:g} (quantile {level:g} of "
            f"{n}); need at least {MIN_EXCESSES}: more scores or a lower init_quantile"
        )
    if target_far * n / n_t >= 1.0:
        raise _pot_not_beyond(target_far, level)
    gamma, _, sigma = stats.genpareto.fit(excesses, floc=0.0)
    value = pot_quantile(t, float(gamma), float(sigma), q=target_far, n=n, n_t=n_t)
    if not math.isfinite(value):
        raise CalibrationError(f"method 'pot': the fitted quantile is not finite (gamma {gamma:g})")
    if gamma <= -1.0:  # no regular maximum-likelihood fit: the tail's end sits on the largest score
        log.warning("method 'pot': the Pareto tail fit is degenerate (gamma %.3g <= -1: it ends at the "
                    "largest score, %.6g), so the threshold %.6g may not hold target_far %g; a percentile "
                    "threshold or another init_quantile is safer for these scores", gamma,
                    float(scores.max()), value, target_far)
    fitted = {
        "init_quantile": level,
        "init_threshold": t,
        "n": n,
        "n_excesses": n_t,
        "gamma": float(gamma),
        "sigma": float(sigma),
    }
    return ThresholdSpec("pot", fitted, value, target_far)


_Method = Callable[[np.ndarray, float, Mapping[str, Any]], ThresholdSpec]
METHODS: dict[str, _Method] = {
    "percentile": _percentile,
    "mad": _mad,
    "sigma": _sigma,
    "gev": _gev,
    "pot": _pot,
}


def pot_excesses(n: int, init_quantile: float) -> int:
    """How many of `n` distinct scores lie above their `init_quantile` quantile (`_pot`'s initial threshold,
    numpy's linear quantile at position `init_quantile * (n - 1)`); ties can only make it fewer."""
    return n - 1 - math.floor(init_quantile * (n - 1))


POT_SEARCH_LIMIT = 10_000_000  # counts beyond this are not a calibration set a workstation run gives


def _pot_not_beyond(target_far: float, level: float) -> CalibrationError:
    return CalibrationError(
        f"method 'pot': target_far {target_far:.10g} is not beyond the initial quantile {level:.10g}; lower "
        f"init_quantile below 1 - target_far ({1 - target_far:.10g}) or use 'percentile'"
    )


def scores_needed(method: str, target_far: float, params: Mapping[str, Any]) -> int:
    """The fewest scores from which `calibrate(scores, method, target_far, **params)` works for every larger
    count too, from the method and its parameters alone (for distinct scores; ties in real ones can still
    make a method refuse), so that a training run finds out before its epochs. A `CalibrationError` when no
    count is enough (POT with `target_far` not beyond `init_quantile`)."""
    if method == "percentile":
        q = float(params.get("q", 1.0 - target_far))
        n = math.ceil(1.0 / (1.0 - q))
        while n * (1.0 - q) < 1.0:  # the very expression `_percentile` checks, in floating point
            n += 1
        while n > 1 and (n - 1) * (1.0 - q) >= 1.0:
            n -= 1
        return max(MIN_SCORES, n)
    if method == "gev":
        return max(MIN_SCORES, MIN_BLOCKS * int(params.get("block_size", 50)))
    if method == "pot":
        level = float(params.get("init_quantile", 0.98))
        tail = 1.0 - level
        if target_far >= tail:
            raise _pot_not_beyond(target_far, level)
        # 10 excesses: pot_excesses grows by 0 or 1 with n, so the first count that has them is the answer
        low, high = MIN_SCORES, max(MIN_SCORES, math.ceil(MIN_EXCESSES / tail) + 2)
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if pot_excesses(middle, level) < MIN_EXCESSES else (low, middle)
        # target_far * n / n_t < 1 holds for every n above `bound`, since n_t >= tail * (n - 1); below it
        # it can fail here and there, so the answer is past the last count below `bound` where it fails
        bound = math.floor(tail / (tail - target_far)) + 1
        if bound > POT_SEARCH_LIMIT:
            raise _pot_not_beyond(target_far, level)
        if bound <= low:
            return low
        counts = np.arange(low, bound + 1, dtype=np.float64)
        excesses = counts - 1 - np.floor(level * (counts - 1))
        failing = np.flatnonzero(target_far * counts / excesses >= 1.0)
        return low if len(failing) == 0 else int(counts[failing[-1]]) + 1
    return MIN_SCORES


def calibrate(
    scores: Sequence[float] | np.ndarray, method: str = "pot", target_far: float = 1e-3, **params: Any
) -> ThresholdSpec:
    """Threshold for `scores` of normal windows by `method` at `target_far` false alarms per window.

    Raises `CalibrationError` for an unknown method or parameter, non-finite scores, too few scores for the
    method, or a fit that cannot give a finite threshold.
    """
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {sorted(METHODS)}")
    far = _check_rate("target_far", target_far)
    array = _as_scores(scores, MIN_SCORES)
    spec = METHODS[method](array, far, params)
    log.debug("calibrated %s threshold %.6g on %d scores", method, spec.value, array.size)
    return spec


def with_margin(spec: ThresholdSpec, margin: float) -> ThresholdSpec:
    """`spec` with its value multiplied by `margin` (SKAB's notebooks: 1.5 x the training 99 % quantile),
    recorded as `params["margin"]`. The product no longer aims at the method's false-alarm rate, so the target
    rate becomes None. A margin of 1 returns `spec` unchanged."""
    if margin == 1.0:
        return spec
    if not (math.isfinite(margin) and margin > 0):
        raise CalibrationError(f"threshold margin must be a positive number, got {margin!r}")
    params = {**spec.params, "margin": float(margin)}
    return ThresholdSpec(spec.method, params, float(margin * spec.value), None)


def score_quantiles(
    scores: Sequence[float] | np.ndarray, qs: Sequence[float] = (0.5, 0.9, 0.99, 0.999)
) -> dict[str, float]:
    """Empirical quantiles of normal scores keyed by the quantile as written (``"0.99"``), for severity."""
    array = _as_scores(scores, 1)
    result: dict[str, float] = {}
    for q in qs:
        level = _check_rate("quantile", q)
        result[f"{level:g}"] = float(np.quantile(array, level))
    return result
