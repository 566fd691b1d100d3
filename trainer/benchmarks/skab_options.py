"""The SKAB benchmark's options: the `[data.skab]` table of its config (`SkabOptions`, parsed strictly by
`parse_options`), the models it runs and the default config file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.configtools import ConfigError, Section
from trainer.benchmarks.skab_scoring import ROW_SCORES
from trainer.config import EvaluationConfig

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "skab.toml"
MODELS = ("vae", "pca_t2q", "isolation_forest")
BASELINE_INPUTS = ("rows", "windows")
VALIDATIONS = ("tail", "interleaved")
CALIBRATE_ON = ("rows", "windows")


@dataclass(frozen=True)
class SkabOptions:
    """The `[data.skab]` table of the benchmark config."""

    train_rows: int = 400  # protocol: first 400 rows of each file
    row_score: str = "min"
    threshold_margin: float = 1.0  # threshold = margin x calibrated value (see skab_scoring.threshold_spec)
    validation: str = "tail"  # early-stopping windows: the last `val_fraction` in time, or every n-th
    val_fraction: float = 0.1
    baseline_input: str = "rows"  # baselines score single rows (as SKAB's T2+Q) or flattened windows
    detrend_channels: tuple[str, ...] = ()  # VAE inputs: these channels centred on each window's mean
    calibrate_on: str = "rows"  # threshold from training row scores (same rule as test rows) or windows
    anomaly_free_rows: int = 0  # > 0: also measure the false-alarm rate on the anomaly-free run (see below)
    # Development split (`trainer.benchmarks.skab_select`): files (``valve1/3``) or folders (``valve1``) whose
    # test labels may be used to choose the VAE's row rule and margin; metrics are also reported separately
    # for them and for the held-out files.
    dev_files: tuple[str, ...] = ()
    select_row_scores: tuple[str, ...] = ()  # candidates; empty: no selection, `row_score` as given
    select_margins: tuple[float, ...] = ()  # candidates; empty: no selection, `threshold_margin` as given
    select_max_far_pct: float = 15.0  # limits a candidate must meet on the development files
    select_max_mar_pct: float = 25.0

    @property
    def selects(self) -> bool:
        return bool(self.select_row_scores) and bool(self.select_margins)


def parse_options(raw: dict[str, Any]) -> SkabOptions:
    """Strictly parse `[data.skab]` (unknown keys are errors naming `data -> skab -> KEY`)."""
    section = Section(raw, "data -> skab")
    options = SkabOptions(
        section.integer("train_rows", 400, minimum=2),
        section.choice("row_score", ROW_SCORES, "min"),
        section.number("threshold_margin", 1.0, minimum=0, exclusive_minimum=True),
        section.choice("validation", VALIDATIONS, "tail"),
        section.number("val_fraction", 0.1, minimum=0, maximum=0.5, exclusive_minimum=True),
        section.choice("baseline_input", BASELINE_INPUTS, "rows"),
        section.str_list("detrend_channels", []),
        section.choice("calibrate_on", CALIBRATE_ON, "rows"),
        section.integer("anomaly_free_rows", 0, minimum=0),
        section.str_list("dev_files", []),
        section.str_list("select_row_scores", []),
        _positive_numbers(section, "select_margins"),
        section.number("select_max_far_pct", 15.0, minimum=0, maximum=100),
        section.number("select_max_mar_pct", 25.0, minimum=0, maximum=100),
    )
    section.finish()
    for i, rule in enumerate(options.select_row_scores):
        if rule not in ROW_SCORES:
            raise ConfigError(
                f"data -> skab -> select_row_scores -> {i}", f"must be one of {', '.join(ROW_SCORES)}", rule
            )
    if bool(options.select_row_scores) != bool(options.select_margins):
        raise ConfigError(
            "data -> skab -> select_margins",
            "select_row_scores and select_margins are given together (both empty: no selection)",
            list(options.select_margins),
        )
    if options.selects and not options.dev_files:
        raise ConfigError(
            "data -> skab -> dev_files", "selection needs the development files it chooses on", []
        )
    if 0 < options.anomaly_free_rows <= options.train_rows:
        raise ConfigError(
            "data -> skab -> anomaly_free_rows",
            f"must be 0 or more than train_rows ({options.train_rows})",
            options.anomaly_free_rows,
        )
    return options


# `[evaluation]` values the benchmark honours. Its VAE scores windows by reconstruction error: on the
# development files and the anomaly-free run the negative ELBO did no better and the latent density far worse
# (docs/benchmarks-skab.md, "Score kind"); per-file models trained on each file's first rows need no
# per-asset baseline.
EVALUATION_SCORES = ("auto", "reconstruction")
EVALUATION_BASELINES = ("auto", "none")


def check_evaluation(evaluation: EvaluationConfig, source: str | None = None) -> None:
    """Refuse `[evaluation]` settings the SKAB benchmark would otherwise ignore silently (`source`: the
    config file, named in the error)."""
    if evaluation.score not in EVALUATION_SCORES:
        raise ConfigError(
            "evaluation -> score",
            "the SKAB benchmark scores by reconstruction error (auto or reconstruction; "
            "see docs/benchmarks-skab.md, \"Score kind\")",
            evaluation.score,
            source,
        )
    if evaluation.score_baseline not in EVALUATION_BASELINES:
        raise ConfigError(
            "evaluation -> score_baseline",
            "the SKAB benchmark fits one model per file on that file's first rows: no per-asset baseline "
            "(auto or none)",
            evaluation.score_baseline,
            source,
        )


def _positive_numbers(section: Section, key: str) -> tuple[float, ...]:
    values = section.get(key, list, [])
    out: list[float] = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"{section.key_path(key)} -> {i}", "must be a positive number", value)
        out.append(float(value))
    return tuple(out)
