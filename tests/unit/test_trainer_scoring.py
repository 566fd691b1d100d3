"""Training a tiny VAE, checkpoints, scoring, per-channel attribution, per-asset baselines, fault
injection."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import ModelConfig, TrainConfig
from trainer.data.synthetic import make_series
from trainer.data.windows import StandardScaler, make_windows
from trainer.rootcause import FAULTS, evaluate_root_cause, inject
from trainer.run import scale_windows
from trainer.scoring import (
    build_scorer,
    detrend_mask,
    latent_statistics,
    per_asset_baseline,
    run_scorer,
    score_windows,
)
from trainer.train import fit_vae, load_checkpoint, save_checkpoint

TINY = ModelConfig(latent_dim=4, hidden=(16, 16), kernel_size=5, beta=0.05, kl_warmup_epochs=1)
FAST = TrainConfig(epochs=6, batch_size=64, learning_rate=3e-3, patience=3, seed=0, threads=1)


@pytest.fixture(scope="module")
def trained() -> tuple[object, dict, np.ndarray]:
    series = make_series(6, 240, 4, seed=0)
    windows = make_windows(series, 24, 2)
    scaler = StandardScaler.fit(np.concatenate([s.values for s in series]))
    scaled = scale_windows(scaler, windows.data, 4)
    stream = io.StringIO()
    vae, history = fit_vae(scaled[:400], scaled[400:], TINY, FAST, progress=True, stream=stream)
    text = stream.getvalue()
    assert "epoch 1/6" in text
    assert "val" in text
    # not a terminal (a log file): one line per epoch, nothing redrawn with \r
    assert "\r" not in text
    assert len(text.splitlines()) == len(history.val_loss)
    assert history.val_loss[-1] < history.val_loss[0]
    assert 0 <= history.best_epoch < len(history.val_loss)
    return vae, scaler.to_dict(), windows.data


def test_fit_is_deterministic_for_a_seed(trained: tuple) -> None:
    _, scaler, windows = trained
    scaled = scale_windows(StandardScaler(np.asarray(scaler["mean"]), np.asarray(scaler["std"])), windows, 4)
    config = TrainConfig(epochs=2, batch_size=64, seed=3, threads=1)
    a, _ = fit_vae(scaled[:200], scaled[200:260], TINY, config, progress=False)
    b, _ = fit_vae(scaled[:200], scaled[200:260], TINY, config, progress=False)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, msg=name)


def test_checkpoint_round_trip_gives_identical_scores(trained: tuple, tmp_path: Path) -> None:
    vae, scaler, windows = trained
    meta = {"channels": ["ch_0", "ch_1", "ch_2", "ch_3"], "scaler": scaler, "threshold": {"value": 1.0}}
    save_checkpoint(tmp_path / "checkpoint.pt", vae, meta)
    loaded, loaded_meta = load_checkpoint(tmp_path / "checkpoint.pt")
    assert loaded_meta == meta
    before = score_windows(build_scorer(vae, scaler, "reconstruction", None), windows[:20])
    after = score_windows(build_scorer(loaded, scaler, "reconstruction", None), windows[:20])
    np.testing.assert_array_equal(before.score, after.score)
    np.testing.assert_array_equal(before.channel_error, after.channel_error)
    with pytest.raises(TypeError, match="JSON-able"):
        save_checkpoint(tmp_path / "bad.pt", vae, {"x": np.zeros(2)})
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_every_score_kind_gives_finite_outputs(trained: tuple) -> None:
    vae, scaler, windows = trained
    stats = latent_statistics(
        score_windows(build_scorer(vae, scaler, "reconstruction", None), windows).latent_mean
    )
    for kind in ("reconstruction", "elbo", "latent"):
        out = score_windows(build_scorer(vae, scaler, kind, stats), windows[:50], batch_size=16)
        assert out.score.shape == (50,)
        assert np.all(np.isfinite(out.score))
        assert out.channel_error.shape == (50, 4)
        assert out.time_error.shape == (50, 24)


def test_fault_in_one_channel_ranks_that_channel_first(trained: tuple) -> None:
    vae, scaler, windows = trained
    scorer = build_scorer(vae, scaler, "reconstruction", None)
    std = np.asarray(scaler["std"])
    for channel in range(4):
        faulty = windows[:30].copy()
        faulty[:, channel, 12:] += 5 * std[channel]
        error = score_windows(scorer, faulty).channel_error
        assert np.mean(error.argmax(axis=1) == channel) >= 0.9
    healthy = score_windows(scorer, windows[:30]).score
    faulty = windows[:30].copy()
    faulty[:, 1, 12:] += 5 * std[1]
    assert np.all(score_windows(scorer, faulty).score > np.median(healthy))
    report = evaluate_root_cause(scorer, scaler, windows, sizes=(5.0,), faults=("step",), n_trials=40, seed=0)
    assert report["by_size"]["5"]["top1"] >= 0.9
    assert report["by_size"]["5"]["n"] == 40


def test_inject_changes_only_the_chosen_channel_after_onset() -> None:
    rng = np.random.default_rng(0)
    window = rng.normal(0, 1, (3, 20)).astype(np.float32)
    sigma = np.full((3, 20), 2.0)
    for fault in FAULTS:
        out = inject(window, sigma, 1, fault, 3.0, onset=10, rng=rng)
        np.testing.assert_array_equal(out[[0, 2]], window[[0, 2]])
        np.testing.assert_array_equal(out[1, :10], window[1, :10])
        assert not np.allclose(out[1, 10:], window[1, 10:])
    step = inject(window, sigma, 0, "step", 3.0, onset=10, rng=rng)
    np.testing.assert_allclose(np.abs(step[0, 10:] - window[0, 10:]), 6.0, rtol=1e-5)
    stuck = inject(window, sigma, 2, "stuck", 1.0, onset=5, rng=rng)
    assert len(np.unique(stuck[2, 5:])) == 1
    with pytest.raises(ValueError, match="unknown fault"):
        inject(window, sigma, 0, "melt", 1.0, onset=5, rng=rng)


def test_per_asset_baseline_is_causal_median_of_first_windows() -> None:
    score = np.array([5.0, 7.0, 6.0, 10.0, 1.0, 2.0, 3.0])
    series = np.array(["a", "a", "a", "a", "b", "b", "b"], dtype=object)
    adjusted = per_asset_baseline(score, series, 2)
    # a: baselines 5 (median of [5]), 6 (median of [5, 7]), then fixed at 6
    np.testing.assert_allclose(adjusted[:4], [0.0, 1.0, 0.0, 4.0])
    np.testing.assert_allclose(adjusted[4:], [0.0, 0.5, 1.5])


def test_stuck_is_a_pure_frozen_value_and_has_no_size() -> None:
    rng = np.random.default_rng(1)
    window = rng.normal(0, 1, (3, 20)).astype(np.float32)
    sigma = np.full((3, 20), 2.0)
    small = inject(window, sigma, 2, "stuck", 1.0, onset=8, rng=np.random.default_rng(0))
    large = inject(window, sigma, 2, "stuck", 5.0, onset=8, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(small[2, 8:], np.full(12, window[2, 8]))  # held at the onset value
    np.testing.assert_array_equal(small, large)  # no offset: size does not apply


def test_root_cause_report_keys_stuck_as_frozen_and_checks_the_target(trained: tuple) -> None:
    vae, scaler, windows = trained
    scorer = build_scorer(vae, scaler, "reconstruction", None)
    report = evaluate_root_cause(scorer, scaler, windows, sizes=(1.0, 5.0), faults=("step", "stuck"),
                                 n_trials=20, seed=0)
    assert set(report["per_fault"]["step"]) == {"1", "5"}
    assert set(report["per_fault"]["stuck"]) == {"frozen"}
    assert report["by_size"]["5"]["n"] == 20  # step only: the unsized fault is not in the size totals
    assert report["by_size"]["5"]["top1"] == report["per_fault"]["step"]["5"]["top1"]
    target = report["target"]
    checked = {
        "step 5 sigma": report["per_fault"]["step"]["5"]["top1"],  # 1 sigma is below the target's 3 sigma
        "stuck frozen": report["per_fault"]["stuck"]["frozen"]["top1"],
    }
    expected_below = [name for name, top1 in checked.items() if top1 < 0.9]
    assert [entry.split(":")[0] for entry in target["below"]] == expected_below
    assert target["met"] == (not expected_below)


def test_scorer_from_run_json_carries_the_detrend_channels(trained: tuple) -> None:
    vae, scaler, windows = trained
    channels = ["ch_0", "ch_1", "ch_2", "ch_3"]
    assert detrend_mask(channels, None) == detrend_mask(channels, []) == [False] * 4
    assert detrend_mask(channels, ["ch_2", "ch_0"]) == [True, False, True, False]
    with pytest.raises(ValueError, match=r"\['Temp'\] not among the model channels"):
        detrend_mask(channels, ["Temp"])
    run = {"channels": channels, "scaler": scaler, "scoring": "reconstruction", "latent_stats": None}
    old = run_scorer(vae, run)  # a run.json from before the key: nothing centred
    assert not old.centred
    np.testing.assert_array_equal(
        score_windows(old, windows[:20]).score,
        score_windows(build_scorer(vae, scaler, "reconstruction", None), windows[:20]).score,
    )
    centred = run_scorer(vae, {**run, "detrend_channels": ["ch_1"]})
    shifted = windows[:20].copy()
    shifted[:, 1] += 3.0
    np.testing.assert_allclose(
        score_windows(centred, shifted).score, score_windows(centred, windows[:20]).score, rtol=1e-4
    )
    assert not np.allclose(score_windows(old, shifted).score, score_windows(old, windows[:20]).score)


def test_the_progress_line_is_redrawn_in_place_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    series = make_series(2, 120, 4, seed=1)
    scaled = scale_windows(StandardScaler.fit(np.concatenate([s.values for s in series])),
                           make_windows(series, 24, 2).data, 4)
    stream = Terminal()
    _vae, history = fit_vae(scaled[:60], scaled[60:], TINY, FAST, progress=True, stream=stream)
    text = stream.getvalue()
    assert text.startswith("\repoch 1/6 [1/")
    assert text.count("\n") == len(history.val_loss)  # each epoch's line ends once, with its val loss
