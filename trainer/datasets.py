"""From a `[data]` config to the series of each split (fit / validation / calibration / test).

Splits are by unit or series, never by window. C-MAPSS: training units are split (seeded) into fit units,
validation units (early stopping, score choice, lead time on whole run-to-failure lives) and calibration units
(threshold); only the healthy part (RUL >= `healthy_min_rul`) of fit/validation/calibration units is normal
data. The test set is `test_FD00x`, labelled 1 where RUL < `label_rul`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from trainer.config import DataConfig
from trainer.data import cmapss, synthetic
from trainer.data.series import Series
from trainer.data.windows import split_series

T = TypeVar("T")


@dataclass
class Splits:
    """Normal series for fitting, validation and calibration; labelled series for validation and test."""

    fit: list[Series]
    val: list[Series]  # normal parts only (validation loss)
    calibration: list[Series]  # normal parts only, never seen by training
    val_labelled: list[Series]  # whole validation series with labels (score choice, lead time)
    test: list[Series]  # labelled
    n_regimes: int = 1
    healthy_min_rul: float | None = None  # C-MAPSS only: for lead-time metrics


def load_splits(config: DataConfig, sample_period_s: float | None = None) -> Splits:
    """The splits for the configured source; `sample_period_s` (`[windows]`): CSV files must be sampled at
    that period, which the bundle hands to the agent as its window grid."""
    if config.cmapss is not None:
        return _cmapss(config)
    if config.synthetic is not None:
        return _synthetic(config)
    if config.source == "csv" and config.generic is not None:
        return _csv(config, sample_period_s)
    raise ValueError(
        f"data source {config.source!r} is handled by its benchmark command "
        f"(edge-trainer benchmark {config.source}); `fit` supports cmapss, csv and synthetic"
    )


def with_rul_labels(series: Series, label_rul: float) -> Series:
    """The series with labels = 1 where RUL < `label_rul`."""
    if series.rul is None:
        raise ValueError(f"series {series.name!r} has no RUL")
    labelled = series.slice(0)
    labelled.labels = (np.asarray(series.rul) < label_rul).astype(np.int64)
    return labelled


def healthy_part(series: Series, healthy_min_rul: float) -> Series | None:
    """Leading rows with RUL >= `healthy_min_rul` (None when there are none)."""
    assert series.rul is not None
    n = int(np.sum(np.asarray(series.rul) >= healthy_min_rul))
    return series.slice(0, n) if n else None


def _three_way(series: list[T], config: DataConfig) -> tuple[list[T], list[T], list[T]]:
    """Whole series (or groups of series) into fit / validation / calibration by the config's fractions."""
    rest, calibration = split_series(series, config.calibration_fraction, config.split_seed)
    fraction = config.val_fraction / (1 - config.calibration_fraction)
    fit, val = split_series(rest, fraction, config.split_seed + 1)
    return fit, val, calibration


def _cmapss(config: DataConfig) -> Splits:
    source = config.cmapss
    assert source is not None
    data = cmapss.load_subset(source.data_dir, source.subset)
    train, test = data.train, data.test
    if source.max_units:
        train, test = train[: source.max_units], test[: source.max_units]
    fit, val, calibration = _three_way(train, config)

    def healthy(group: list[Series]) -> list[Series]:
        parts = [healthy_part(s, source.healthy_min_rul) for s in group]
        kept = [p for p in parts if p is not None]
        if not kept:
            raise ValueError(
                f"no healthy rows (RUL >= {source.healthy_min_rul}) in units {[s.name for s in group][:5]}"
            )
        return kept

    return Splits(
        fit=healthy(fit),
        val=healthy(val),
        calibration=healthy(calibration),
        val_labelled=[with_rul_labels(s, source.label_rul) for s in val],
        test=[with_rul_labels(s, source.label_rul) for s in test],
        n_regimes=source.n_regimes,
        healthy_min_rul=source.healthy_min_rul,
    )


def _synthetic(config: DataConfig) -> Splits:
    source = config.synthetic
    assert source is not None
    normal = synthetic.make_series(source.n_series, source.length, source.n_channels, source.seed)
    faulty = synthetic.make_series(
        max(2, source.n_series // 2), source.length, source.n_channels, source.seed + 1, anomalous=True
    )
    fit, val, calibration = _three_way(normal, config)
    half = len(faulty) // 2
    extra_normal = synthetic.make_series(
        2, source.length, source.n_channels, source.seed + 2, name_prefix="synthetic-test"
    )
    return Splits(
        fit=fit,
        val=val,
        calibration=calibration,
        val_labelled=val + faulty[:half],
        test=extra_normal + faulty[half:],
    )


def _csv(config: DataConfig, sample_period_s: float | None = None) -> Splits:
    """A user's CSV files (`trainer.data.csv_reader`). Series (files, or segments between long gaps) without
    any label 1 are normal. With normal series from three or more files, whole files go to fit / validation /
    calibration (a file's segments stay together: segments cut by a few dropouts are not independent
    recordings, and counting them as such could leave a short tail segment to fit on); with fewer, each
    normal series is cut in time into contiguous blocks by the same fractions (`[data] split` forces
    either). Series holding anomalies: with two or more, every other one goes to validation (score choice)
    and the rest to test; a single one goes to test. Without any, the test set is the calibration series
    (scores and FAR only, no ROC-AUC)."""
    from trainer.data.csv_reader import CsvOptions, read_csv_files

    assert config.generic is not None
    options = CsvOptions.from_options(config.generic.options)
    files = read_csv_files(list(options.paths), options)
    if sample_period_s is not None:
        for path, segments in zip(options.paths, files, strict=True):
            _check_period(path, segments, sample_period_s)
    def anomalous(series: Series) -> bool:
        return series.labels is not None and bool(np.any(series.labels))

    labelled = [s for segments in files for s in segments if anomalous(s)]
    # each file's normal segments, for files that have any
    by_file = [group for segments in files
               if (group := [_zero_labels(s) for s in segments if not anomalous(s)])]
    normal = [s for group in by_file for s in group]
    if not normal:
        raise ValueError(
            "CSV data: every series holds anomalies; training needs normal series (all labels 0)"
        )
    if config.split == "series" or (config.split == "auto" and len(by_file) >= 3):
        if len(by_file) < 3:
            raise ValueError(
                f"CSV data: split = \"series\" needs normal data in at least 3 files, got {len(by_file)}"
            )
        fit, val, calibration = ([s for group in part for s in group] for part in _three_way(by_file, config))
    else:
        fit, val, calibration = [], [], []
        for item in normal:
            cut_val = round(len(item) * (1 - config.val_fraction - config.calibration_fraction))
            cut_cal = round(len(item) * (1 - config.calibration_fraction))
            fit.append(item.slice(0, cut_val))
            val.append(item.slice(cut_val, cut_cal))
            calibration.append(item.slice(cut_cal))
    val_anomalous = labelled[0::2] if len(labelled) > 1 else []
    test = [s for s in labelled if all(s is not v for v in val_anomalous)] or calibration
    return Splits(fit=fit, val=val, calibration=calibration, val_labelled=val + val_anomalous, test=test)


def _check_period(path: str, segments: list[Series], expected: float) -> None:
    """A file's sample period (its rows lie on a regular grid after the reader) is the windows' period."""
    longest = max(segments, key=len)
    if len(longest) < 2 or longest.timestamps is None:
        return
    period = float(np.median(np.diff(longest.timestamps)))
    if abs(period - expected) > 1e-3 * expected:
        raise ValueError(
            f"{path}: samples every {period:g} s, but windows -> sample_period_s is {expected:g}: the model "
            f"and the agent's window grid would assume {expected:g} s between samples (set windows -> "
            f"sample_period_s = {period:g}, or give files sampled every {expected:g} s)"
        )


def _zero_labels(series: Series) -> Series:
    if series.labels is not None:
        return series
    labelled = series.slice(0)
    labelled.labels = np.zeros(len(series), dtype=np.int64)
    return labelled
