"""From a `[data]` config to the series of each split (fit / validation / calibration / test).

Splits are by unit or series, never by window. C-MAPSS: training units are split (seeded) into fit units,
validation units (early stopping, score choice, lead time on whole run-to-failure lives) and calibration units
(threshold); only the healthy part (RUL >= `healthy_min_rul`) of fit/validation/calibration units is normal
data. The test set is `test_FD00x`, labelled 1 where RUL < `label_rul`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from trainer.config import DataConfig
from trainer.data import cmapss, synthetic
from trainer.data.series import Series
from trainer.data.windows import split_series

if TYPE_CHECKING:
    from trainer.data.csv_reader import CsvRecording

T = TypeVar("T")


class RowOrigin:
    """Where a row or series of the splits comes from, for messages. This one, for sources without files and
    lines, names the series and row index; `CsvRows` names the file and line."""

    def row(self, series: Series, row: int) -> str:
        """Row `row` of `series`: `series 'NAME', row N`."""
        return f"series {series.name!r}, row {row}"

    def file(self, name: str) -> str | None:
        """The file the series named `name` was read from (None when unknown)."""
        return None


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
    # names a row of any split's series for messages: CSV data gives the file and line
    origin: RowOrigin = field(default_factory=RowOrigin)


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
    """A user's CSV files (`trainer.data.csv_reader`). Files without any label 1 are normal; a file with a
    label 1 anywhere is labelled, all its segments (those between long gaps) with it: its healthy rows are
    scored, never fitted on. With normal data from three or more files, whole files go to fit / validation /
    calibration (a file's segments stay together: segments cut by a few dropouts are not independent
    recordings, and counting them as such could leave a short tail segment to fit on); with fewer, each
    normal series is cut in time into contiguous blocks by the same fractions (`[data] split` forces
    either). Labelled files: with two or more, every other one goes to validation (score choice) and the
    rest to test, each whole, so one fault event is never both chosen on and tested on; a single one goes
    to test. Without any, the test set is the calibration series (scores and FAR only, no ROC-AUC)."""
    from trainer.data.csv_reader import CsvOptions, read_recordings

    assert config.generic is not None
    options = CsvOptions.from_options(config.generic.options)
    recordings = read_recordings(list(options.paths), options)
    files = [recording.segments for recording in recordings]
    if sample_period_s is not None:
        for path, segments in zip(options.paths, files, strict=True):
            _check_period(path, segments, sample_period_s)
    def anomalous(series: Series) -> bool:
        return series.labels is not None and bool(np.any(series.labels))

    labelled_files = [segments for segments in files if any(anomalous(s) for s in segments)]
    by_file = [[_zero_labels(s) for s in segments] for segments in files
               if not any(anomalous(s) for s in segments)]
    normal = [s for group in by_file for s in group]
    if not normal:
        labelled = [s for segments in labelled_files for s in segments]
        rows = sum(len(s) for s in labelled)
        ones = sum(int(np.sum(s.labels)) for s in labelled if s.labels is not None)
        raise ValueError(
            f"CSV data: every file holds rows labelled 1 in label_column {options.label_column!r} "
            f"({ones} of {rows} rows, {100 * ones / rows:.0f} %); training needs normal files (all labels "
            "0). "
            f"Is {options.label_column!r} the anomaly label (1 = anomalous)? If so, add healthy recordings "
            "with a label column of 0; if not, set data -> csv -> label_column to the column that marks "
            "anomalies, or leave it out"
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
    # with two or more labelled files, the 1st, 3rd, ... validate, each file whole
    to_val = [len(labelled_files) > 1 and i % 2 == 0 for i in range(len(labelled_files))]
    val_anomalous = [s for segments, v in zip(labelled_files, to_val, strict=True) if v for s in segments]
    test = [s for segments, v in zip(labelled_files, to_val, strict=True) if not v for s in segments]
    test = test or calibration
    return Splits(fit=fit, val=val, calibration=calibration, val_labelled=val + val_anomalous, test=test,
                  origin=CsvRows(recordings))


class CsvRows(RowOrigin):
    """`Splits.origin` for CSV data: a row of a series (a file's segment, or a block of one cut in time) as
    `PATH: line N`, found by the series name (unique per segment) and the row's timestamp."""

    def __init__(self, recordings: list[CsvRecording]) -> None:
        self._segments = {
            segment.name: (recording.path, np.asarray(segment.timestamps), lines)
            for recording in recordings
            for segment, lines in zip(recording.segments, recording.lines, strict=True)
        }

    def file(self, name: str) -> str | None:
        found = self._segments.get(name)
        return None if found is None else str(found[0])

    def row(self, series: Series, row: int) -> str:
        found = self._segments.get(series.name)
        if found is None or series.timestamps is None:
            return super().row(series, row)
        path, times, lines = found
        stamp = series.timestamps[row]
        index = int(np.searchsorted(times, stamp))
        if index >= len(times) or times[index] != stamp:
            return super().row(series, row)
        line = int(lines[index])
        if line == 0:  # inserted on the time grid (a short gap), its value interpolated
            before = lines[:index][lines[:index] > 0]
            return f"{path}: a row interpolated after line {int(before[-1]) if len(before) else '?'}"
        return f"{path}: line {line}"


def _check_period(path: str, segments: list[Series], expected: float) -> None:
    """A file's sample period (its rows lie on a regular grid after the reader) is the windows' period."""
    longest = max(segments, key=len)
    if len(longest) < 2 or longest.timestamps is None:
        return
    period = float(np.median(np.diff(longest.timestamps)))
    if abs(period - expected) > 1e-3 * expected:
        ratio = period / expected
        if abs(ratio - 1000.0) <= 1.0:  # numbers 1000 times too large: milliseconds read as seconds
            fix = ('the timestamps look like Unix milliseconds read as seconds: set data -> csv -> '
                   'timestamp_format = "unix_ms" (and the same in the agent\'s source)')
        elif abs(ratio - 0.001) <= 1e-6:
            fix = ('the timestamps look like Unix seconds read as milliseconds: set data -> csv -> '
                   'timestamp_format = "unix_s"')
        else:
            fix = f"set windows -> sample_period_s = {period:g}, or give files sampled every {expected:g} s"
        raise ValueError(
            f"{path}: samples every {period:g} s, but windows -> sample_period_s is {expected:g}: the model "
            f"and the agent's window grid would assume {expected:g} s between samples ({fix})"
        )


def _zero_labels(series: Series) -> Series:
    if series.labels is not None:
        return series
    labelled = series.slice(0)
    labelled.labels = np.zeros(len(series), dtype=np.int64)
    return labelled
