from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bundle import Bundle, read_bundle
from edge_agent.inference import (
    MIN_PARALLEL_PART,
    InferenceEngine,
    InferenceError,
    ProviderSettings,
    choose_providers,
)
from edge_agent.storage import Store
from edge_agent.types import Window
from tests.support.bundles import build_test_bundle, normal_windows, write_test_public_key

pytestmark = pytest.mark.integration

CHANNELS = ["pressure", "flow", "vibration"]
LENGTH = 16


def load(tmp_path: Path, **overrides: object) -> Bundle:
    path = build_test_bundle(tmp_path / "out", channels=CHANNELS, window_length=LENGTH, stride=8, **overrides)
    keys = tmp_path / "keys"
    write_test_public_key(keys)
    return read_bundle(path, trusted_keys=keys, extract_to=tmp_path / "bundle")


def windows_of(data: np.ndarray, asset: str = "pump-1", model: str = "pump") -> list[Window]:
    return [Window(asset, model, float(i), float(i + LENGTH - 1), d) for i, d in enumerate(data)]


def test_scores_match_the_bundle_reference_outputs(tmp_path: Path) -> None:
    bundle = load(tmp_path)
    engine = InferenceEngine(bundle, ProviderSettings(), max_batch=8)
    ref = bundle.reference("pump")
    spec = bundle.manifest.model("pump").reference
    scored = asyncio.run(engine.score(windows_of(ref["window"])))
    assert len(scored) == len(ref["window"])
    for i, s in enumerate(scored):
        np.testing.assert_allclose(s.raw_score, ref["score"][i], rtol=spec.rtol, atol=spec.atol)
        np.testing.assert_allclose(s.channel_error, ref["channel_error"][i], rtol=spec.rtol, atol=spec.atol)
        np.testing.assert_allclose(s.time_error, ref["time_error"][i], rtol=spec.rtol, atol=spec.atol)
        np.testing.assert_allclose(s.latent_mean, ref["latent_mean"][i], rtol=spec.rtol, atol=spec.atol)
        assert s.score == s.raw_score  # no baseline in this bundle
        assert s.threshold == bundle.manifest.model("pump").threshold.value
    # the reference's third window has an offset on the first channel: above threshold, channel ranked first
    assert scored[2].is_above
    assert int(np.argmax(scored[2].channel_error)) == 0
    engine.close()


def test_windows_name_their_flat_lined_channels(tmp_path: Path) -> None:
    """The manifest's `flatline` channels whose readings did not change at all in a window; channels left
    out of the list (here: vibration) are never named, and a version 1 bundle names none."""
    bundle = load(tmp_path, flatline={"channels": ["pressure", "flow"], "healthy_windows": 512})
    data = normal_windows(4, len(CHANNELS), LENGTH, seed=3)
    data[1, 1, :] = 12.5  # flow frozen at one reading
    data[2, :, :] = data[2, :, :1]  # every channel frozen
    data[3, 0, :-1] = 7.0  # pressure frozen but for its last sample: still moving
    engine = InferenceEngine(bundle, max_batch=8)
    scored = asyncio.run(engine.score(windows_of(data)))
    assert [s.flat for s in scored] == [(), ("flow",), ("pressure", "flow"), ()]
    engine.close()
    old = load(tmp_path / "v1", schema_version=1)
    assert old.manifest.schema_version == 1
    assert old.manifest.model("pump").flatline is None
    engine = InferenceEngine(old, max_batch=8)
    assert [s.flat for s in asyncio.run(engine.score(windows_of(data)))] == [(), (), (), ()]
    engine.close()


def test_batching_gives_the_same_scores_as_batch_one(tmp_path: Path) -> None:
    bundle = load(tmp_path)
    data = normal_windows(37, len(CHANNELS), LENGTH, seed=5)
    one = InferenceEngine(bundle, max_batch=1)
    many = InferenceEngine(bundle, max_batch=16)
    mixed = windows_of(data[:20], "pump-1") + windows_of(data[20:], "pump-2")
    a = asyncio.run(one.score(mixed))
    b = asyncio.run(many.score(mixed))
    assert [s.window.asset for s in b] == [w.asset for w in mixed]  # input order kept
    np.testing.assert_allclose([s.raw_score for s in a], [s.raw_score for s in b], rtol=1e-6)
    np.testing.assert_allclose(np.stack([s.channel_error for s in a]), np.stack([s.channel_error for s in b]),
                               rtol=1e-6)
    one.close()
    many.close()


def test_parallel_runs_split_a_large_batch_and_give_the_same_scores_in_order(tmp_path: Path) -> None:
    bundle = load(tmp_path)
    data = normal_windows(45, len(CHANNELS), LENGTH, seed=6)
    mixed = windows_of(data[:30], "pump-1") + windows_of(data[30:], "pump-2")
    serial = InferenceEngine(bundle, max_batch=64)
    parallel = InferenceEngine(bundle, ProviderSettings(parallel_runs=3), max_batch=64)
    runs: list[tuple[str, int]] = []
    run_batch = parallel.run_batch

    def recording(model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        runs.append((threading.current_thread().name, len(batch)))
        return run_batch(model, batch)

    parallel.run_batch = recording  # type: ignore[method-assign]
    a = asyncio.run(serial.score(mixed))
    b = asyncio.run(parallel.score(mixed))
    # 45 windows in three parts of 15: one in the inference thread, two in helper threads
    assert sorted(size for _, size in runs) == [15, 15, 15]
    assert sorted(name.split("_")[0] for name, _ in runs) == ["inference", "inference-helper",
                                                              "inference-helper"]
    assert [(s.window.asset, s.window.end_ts) for s in b] == [(w.asset, w.end_ts) for w in mixed]
    np.testing.assert_allclose([s.raw_score for s in a], [s.raw_score for s in b], rtol=1e-6)
    np.testing.assert_allclose(np.stack([s.latent_mean for s in a]), np.stack([s.latent_mean for s in b]),
                               rtol=1e-6, atol=1e-7)
    # a small batch is not split: parts under MIN_PARALLEL_PART windows cost more than they give
    runs.clear()
    asyncio.run(parallel.score(mixed[:2 * MIN_PARALLEL_PART - 1]))
    assert [size for _, size in runs] == [2 * MIN_PARALLEL_PART - 1]
    serial.close()
    parallel.close()


def test_unavailable_provider_falls_back_to_cpu_with_a_log(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    bundle = load(tmp_path)
    settings = ProviderSettings(providers=(("NoSuchExecutionProvider", {}),), intra_op_threads=1)
    with caplog.at_level(logging.WARNING, logger="edge_agent.inference"):
        engine = InferenceEngine(bundle, settings)
    assert engine.providers("pump") == ["CPUExecutionProvider"]
    assert "NoSuchExecutionProvider is not available" in caplog.text
    assert choose_providers(settings, ["CPUExecutionProvider"]) == [("CPUExecutionProvider", {})]
    engine.close()


def test_wrong_window_shape_and_unknown_model_are_clear_errors(tmp_path: Path) -> None:
    engine = InferenceEngine(load(tmp_path))
    bad = Window("pump-1", "pump", 0.0, 1.0, np.zeros((2, LENGTH), np.float32))
    with pytest.raises(InferenceError, match=r"asset 'pump-1'.*shape \(2, 16\), expected \(3, 16\)"):
        asyncio.run(engine.score([bad]))
    with pytest.raises(InferenceError, match="no model 'fan'"):
        engine.model("fan")
    engine.close()


def test_nonfinite_windows_are_dropped_and_counted(tmp_path: Path) -> None:
    engine = InferenceEngine(load(tmp_path))
    data = normal_windows(2, len(CHANNELS), LENGTH, seed=3)
    data[0, 1, 3] = np.nan
    scored = asyncio.run(engine.score(windows_of(data)))
    assert [s.window.start_ts for s in scored] == [1.0]
    assert engine.dropped_nonfinite == 1
    engine.close()


def baseline_case(tmp_path: Path) -> tuple[Bundle, np.ndarray, Path]:
    """A bundle whose model learns a per-asset baseline from 4 windows, 6 normal windows, a database path."""
    bundle = load(tmp_path, score_baseline={"kind": "per_asset_initial", "windows": 4, "statistic": "median"})
    return bundle, normal_windows(6, len(CHANNELS), LENGTH, seed=4), tmp_path / "state.db"


def test_score_baseline_is_applied_and_survives_restart(tmp_path: Path) -> None:
    bundle, data, db = baseline_case(tmp_path)
    store = Store.open(db)
    engine = InferenceEngine(bundle, store=store)
    first = asyncio.run(engine.score(windows_of(data[:4])))
    raws = [s.raw_score for s in first]
    assert first[0].score == pytest.approx(0.0)  # the first window is its own median
    baseline = float(np.median(raws))
    assert engine.baselines.baseline("pump-1", "pump", bundle.manifest.version) == pytest.approx(baseline)
    engine.close()
    store.close()

    store = Store.open(db)
    engine = InferenceEngine(bundle, store=store)
    later = asyncio.run(engine.score(windows_of(data[4:])))
    for s in later:
        assert s.score == pytest.approx(s.raw_score - baseline, abs=1e-6)
    other = asyncio.run(engine.score(windows_of(data[4:5], asset="pump-2")))
    assert other[0].score == pytest.approx(0.0)  # a new asset starts its own baseline
    engine.close()
    store.close()


def test_flat_lined_windows_stay_out_of_the_score_baseline(tmp_path: Path) -> None:
    """A sensor stuck from the start is not the asset's healthy state: its windows alert (flat line) but
    the baseline is made of the windows after it, as if they were the first."""
    bundle, data, db = baseline_case(tmp_path)
    store = Store.open(db)
    engine = InferenceEngine(bundle, store=store)
    stuck = data[:4].copy()
    stuck[:, 1, :] = 12.5  # flow frozen in the asset's first four windows
    flat = asyncio.run(engine.score(windows_of(stuck)))
    assert [s.flat for s in flat] == [("flow",)] * 4
    assert [s.score for s in flat] == [0.0] * 4  # no baseline collected yet
    assert engine.baselines.baseline("pump-1", "pump", bundle.manifest.version) is None
    healthy = asyncio.run(engine.score(windows_of(data[:4])))
    expected = float(np.median([s.raw_score for s in healthy]))
    assert engine.baselines.baseline("pump-1", "pump", bundle.manifest.version) == pytest.approx(expected)
    engine.close()
    store.close()


def test_real_bundle_scores_drive_one_episode_with_the_faulty_channel_first(tmp_path: Path) -> None:
    from edge_agent.decisions import DecisionConfig, DecisionEngine
    from edge_agent.types import GatewayIdentity

    bundle = load(tmp_path)
    store = Store.open(tmp_path / "state.db")
    engine = InferenceEngine(bundle, store=store)
    decisions = DecisionEngine(DecisionConfig(), GatewayIdentity("s", "a", "l", "gw"), store, bundle.manifest)
    data = normal_windows(30, len(CHANNELS), LENGTH, seed=9)
    data[10:20, 1, :] += 8.0 * 1.5  # an 8-sigma offset on "flow" (std 1.5) for ten windows
    scored = asyncio.run(engine.score(windows_of(data)))
    events = [e for i, s in enumerate(scored) for e in decisions.process(s, 1000.0 + i)]
    assert [e.state for e in events] == ["open", "close"]  # debounce 2 of 3, clear after 3 below
    assert events[0].root_cause[0].channel == "flow"
    assert events[0].severity in {level.level for level in bundle.manifest.model("pump").severity}
    engine.close()
    store.close()


def test_score_baseline_kept_in_memory_while_the_database_is_locked_then_stored(tmp_path: Path) -> None:
    bundle, data, db = baseline_case(tmp_path)
    store = Store.open(db)
    engine = InferenceEngine(bundle, store=store)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the database while the baseline is learnt
    try:
        first = asyncio.run(engine.score(windows_of(data[:4])))  # no error: scoring goes on from memory
    finally:
        other.execute("ROLLBACK")
        other.close()
    baseline = float(np.median([s.raw_score for s in first]))
    version = bundle.manifest.version
    assert engine.baselines.baseline("pump-1", "pump", version) == pytest.approx(baseline)
    assert store.get_baseline("pump-1", "pump", version) is None
    later = asyncio.run(engine.score(windows_of(data[4:5])))  # the next window stores it
    assert later[0].score == pytest.approx(later[0].raw_score - baseline, abs=1e-6)
    record = store.get_baseline("pump-1", "pump", version)
    assert record is not None
    assert record.baseline == pytest.approx(baseline)
    engine.close()
    store.close()


def test_swap_keeps_the_baseline_of_an_asset_in_an_episode_until_it_is_healthy(tmp_path: Path) -> None:
    baseline_spec = {"kind": "per_asset_initial", "windows": 4, "statistic": "median"}
    old_bundle = load(tmp_path / "v1", score_baseline=baseline_spec)
    new_bundle = load(tmp_path / "v2", score_baseline=baseline_spec, version="2.0.0")
    data = normal_windows(8, len(CHANNELS), LENGTH, seed=5)
    faulty = data[4:6].copy()
    faulty[:, 1, :] += 8.0 * 1.5  # the fault the open episode is about
    old = InferenceEngine(old_bundle)
    first = asyncio.run(old.score(windows_of(data[:4])))
    baseline = float(np.median([s.raw_score for s in first]))
    new = InferenceEngine(new_bundle)
    new.baselines.carry_over(old.baselines, {("pump-1", "pump")})
    old.close()
    during = asyncio.run(new.score(windows_of(faulty)))
    for s in during:  # still the old baseline: the fault stays above the threshold, not absorbed
        assert s.score == pytest.approx(s.raw_score - baseline, abs=1e-6)
        assert s.score > s.threshold
    new.baselines.release(set())  # the episode closed: the asset is healthy
    after = asyncio.run(new.score(windows_of(data[6:7])))
    assert after[0].score == pytest.approx(0.0)  # the new bundle's own baseline starts here
    assert new.baselines.carried == frozenset()
    new.close()
