"""ONNX Runtime scoring: one session per bundle model, provider order with CPU fallback, micro-batches.

The exported graph does scaling and scoring itself (docs/architecture.md), so the agent has no
model-specific code: it stacks windows of one model into a `[batch, channels, length]` float32 tensor,
runs the session off the event loop (one worker thread, so inference never competes with itself for the
cores the device profile gave it) and reads the outputs by the names the manifest lists. A profile's
`[threads] parallel_runs = N` splits a large batch (a burst of windows that are ready together) into up to
N parts run concurrently on the same session, by the worker and N - 1 helper threads: ONNX Runtime allows
concurrent runs of one session, and on small models that parallelises a batch better than intra-op threads
(docs/device-profiles.md, "Threads").

Per-asset score baseline (manifest `score_baseline = {kind: per_asset_initial, windows: N, statistic:
median}`): adjusted score = raw - median(raw scores of the asset's first N windows); the threshold applies
to the adjusted score. Until N windows were seen the median of those seen so far is used (so the first
windows of a new asset score about 0 and cannot alert by their score; a window with a flat-lined channel
still alerts, and is left out of the N, since a stuck sensor is not the asset's healthy state). The N raw
scores and the baseline are stored in the `baselines` table per (asset, model, bundle version), so a
restart does not re-baseline an asset whose condition may have degraded meanwhile; a new bundle version (a
new score scale) starts a new baseline, but only once the asset is healthy: on a hot swap an asset with an
open episode keeps its previous fixed baseline (`BaselineTracker.carry_over`) until the episode closes
(`release`), so the fault is neither closed by a fresh ~0 baseline nor absorbed into it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from edge_agent.bundle import Bundle, ModelSpec, ScoreBaseline
from edge_agent.storage import StorageError, Store
from edge_agent.types import ScoredWindow, Window

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# a batch is split for parallel runs only into parts of at least this many windows (smaller parts cost more
# in hand-offs than a second core gives back)
MIN_PARALLEL_PART = 8


class InferenceError(RuntimeError):
    """A model cannot be loaded or a window does not fit it; names bundle, model and what is wrong."""


@dataclass(frozen=True)
class ProviderSettings:
    """Execution providers in order of preference (name, provider options), ORT thread counts, whether
    ORT's worker threads may spin (busy-wait) for work between runs (`allow_spinning`; off by default), and
    into how many concurrent session runs a large batch is split (`parallel_runs`)."""

    providers: tuple[tuple[str, dict[str, Any]], ...] = ((CPU, {}),)
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    allow_spinning: bool = False
    parallel_runs: int = 1


def session_options(settings: ProviderSettings) -> ort.SessionOptions:
    """ONNX Runtime session options for `settings`: thread counts, sequential execution, all graph
    optimisations, and ORT's worker threads spinning only when `allow_spinning` is set. They spin (busy-wait
    for the next run) by default; the agent runs small batches tens of times a second on cores it shares
    with its event loop, where spinning doubled the agent's CPU for no gain in latency
    (docs/device-profiles.md, "Threads")."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = settings.inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    spin = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spin)
    options.add_session_config_entry("session.inter_op.allow_spinning", spin)
    return options


def choose_providers(settings: ProviderSettings,
                     available: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The requested providers that this onnxruntime build has, in order, always ending with CPU."""
    chosen: list[tuple[str, dict[str, Any]]] = []
    for name, options in settings.providers:
        if name in available:
            chosen.append((name, dict(options)))
        else:
            log.warning("execution provider %s is not available in this onnxruntime build (available: %s); "
                        "skipping it", name, ", ".join(available))
    if all(name != CPU for name, _ in chosen):
        chosen.append((CPU, {}))
    return chosen


@dataclass
class _BaselineState:
    raw_scores: list[float]
    baseline: float | None
    persisted: bool = True  # the store has what is above (False: the last write failed; tried again)


class BaselineTracker:
    """Applies a model's `score_baseline` per asset; persisted in the Store when one is given."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store
        self._states: dict[tuple[str, str, str], _BaselineState] = {}
        self._carried: dict[tuple[str, str], float] = {}  # (asset, model) -> a previous bundle's baseline

    @property
    def carried(self) -> frozenset[tuple[str, str]]:
        """(asset, model) pairs scored with a previous bundle's baseline (an episode was open at a swap)."""
        return frozenset(self._carried)

    def carry_over(self, previous: BaselineTracker, pairs: set[tuple[str, str]]) -> None:
        """Adopt `previous`'s fixed baselines for these (asset, model) pairs (those with an open episode)."""
        for (asset, model, _version), state in previous._states.items():
            if (asset, model) in pairs and state.baseline is not None:
                self._carried[(asset, model)] = state.baseline
        for key, baseline in previous._carried.items():
            if key in pairs:
                self._carried[key] = baseline
        for asset, model in sorted(self._carried):
            log.info("score baseline of %s/%s kept from the previous bundle while its episode is open",
                     asset, model)

    def release(self, keep: set[tuple[str, str]]) -> None:
        """Stop using carried baselines except for `keep` (still in an episode): those assets start the new
        bundle's own baseline with their next window."""
        for key in [key for key in self._carried if key not in keep]:
            del self._carried[key]
            log.info("%s/%s healthy again: starting the new bundle's score baseline", *key)

    def adjust(self, asset: str, model: str, bundle_version: str, spec: ScoreBaseline | None,
               raw: float, *, collect: bool = True) -> float:
        """The score to compare with the threshold for this raw score. `collect=False` (a window with a
        flat-lined channel: a stuck sensor, not the asset's healthy state) keeps the raw score out of a
        baseline still being collected."""
        if spec is None:
            return raw
        carried = self._carried.get((asset, model))
        if carried is not None:
            return raw - carried
        key = (asset, model, bundle_version)
        state = self._states.get(key)
        if state is None:
            record = self._store.get_baseline(*key) if self._store is not None else None
            state = (_BaselineState(list(record.raw_scores), record.baseline) if record is not None
                     else _BaselineState([], None))
            self._states[key] = state
        if state.baseline is not None:
            if not state.persisted:
                self._persist(key, state)
            return raw - state.baseline
        if not collect:
            return raw - float(np.median(state.raw_scores)) if state.raw_scores else 0.0
        state.raw_scores.append(raw)
        median = float(np.median(state.raw_scores))
        if len(state.raw_scores) >= spec.windows:
            state.baseline = median
            log.info("score baseline of %s/%s (bundle %s) fixed at %.6g from %d windows", asset, model,
                     bundle_version, median, len(state.raw_scores))
        self._persist(key, state)
        return raw - median

    def _persist(self, key: tuple[str, str, str], state: _BaselineState) -> None:
        """Store the asset's baseline state. This runs on the event loop: a database another process holds
        (or a full disk) fails the write fast, it is logged once and tried again with the asset's next
        window, and scoring goes on from memory."""
        if self._store is None:
            return
        try:
            self._store.put_baseline(*key, state.raw_scores, state.baseline)
        except (sqlite3.Error, StorageError) as exc:
            if state.persisted:
                log.warning("score baseline of %s/%s (bundle %s) not stored yet (kept in memory, "
                            "retried): %s", *key, exc)
            state.persisted = False
        else:
            state.persisted = True

    def baseline(self, asset: str, model: str, bundle_version: str) -> float | None:
        state = self._states.get((asset, model, bundle_version))
        return state.baseline if state else None


@dataclass(frozen=True)
class _Loaded:
    spec: ModelSpec
    session: Any  # ort.InferenceSession
    input_name: str
    output_names: tuple[str, str, str, str]  # score, channel_error, latent_mean, time_error
    shape: tuple[int, int]
    flat_index: np.ndarray | None = None  # input indices of the manifest's `flatline` channels (None: none)

    def flat_mask(self, batch: np.ndarray) -> np.ndarray | None:
        """`[B, K]`: whether the k-th `flatline` channel's readings do not change at all within each window
        of `batch` `[B, C, L]` (None: the manifest lists no channel)."""
        if self.flat_index is None:
            return None
        values = batch[:, self.flat_index, :]
        still: np.ndarray = values.max(axis=2) == values.min(axis=2)
        return still

    def flat_channels(self, mask: np.ndarray | None, count: int) -> list[tuple[str, ...]]:
        """Per window of a batch of `count`, the names of its flat-lined channels from `flat_mask`."""
        flats: list[tuple[str, ...]] = [()] * count
        if mask is None or self.flat_index is None:
            return flats
        channels = self.spec.input.channels
        for row in np.flatnonzero(mask.any(axis=1)).tolist():
            flats[row] = tuple(channels[self.flat_index[i]] for i in np.flatnonzero(mask[row]))
        return flats


class InferenceEngine:
    """Scores windows with the bundle's models. Create once per bundle; `close()` when swapped out."""

    def __init__(self, bundle: Bundle, settings: ProviderSettings | None = None, max_batch: int = 64,
                 store: Store | None = None, max_pending: int = 2) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.bundle = bundle
        self.settings = settings or ProviderSettings()
        self.max_batch = max_batch
        self.baselines = BaselineTracker(store)
        self.dropped_nonfinite = 0
        self._models = {spec.name: self._load(spec) for spec in bundle.manifest.models}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        runs = self.settings.parallel_runs
        self._helpers = (ThreadPoolExecutor(max_workers=runs - 1, thread_name_prefix="inference-helper")
                         if runs > 1 else None)
        # at most `max_pending` batches queued for the worker: callers beyond that wait (back-pressure
        # reaches the supervisor's bounded window queue, which drops the oldest and counts it)
        self._pending = asyncio.Semaphore(max_pending)

    @property
    def bundle_name(self) -> str:
        return self.bundle.manifest.name

    @property
    def bundle_version(self) -> str:
        return self.bundle.manifest.version

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self._models)

    def model(self, name: str) -> ModelSpec:
        """The manifest entry of model `name`."""
        return self._loaded(name).spec

    def providers(self, name: str) -> list[str]:
        """The providers the session of model `name` actually runs on."""
        return list(self._loaded(name).session.get_providers())

    def _loaded(self, name: str) -> _Loaded:
        try:
            return self._models[name]
        except KeyError:
            raise InferenceError(f"bundle {self.bundle_name} {self.bundle_version} has no model {name!r} "
                                 f"(models: {', '.join(self._models)})") from None

    def _load(self, spec: ModelSpec) -> _Loaded:
        path = self.bundle.model_path(spec.name)
        where = f"bundle {self.bundle_name} {self.bundle_version}, model {spec.name} ({path.name})"
        chosen = choose_providers(self.settings, ort.get_available_providers())
        options = session_options(self.settings)
        try:
            session = ort.InferenceSession(str(path), options, providers=[n for n, _ in chosen],
                                           provider_options=[o for _, o in chosen])
        except Exception as exc:
            if [n for n, _ in chosen] == [CPU]:
                raise InferenceError(f"{where}: onnxruntime cannot load the model: {exc}") from exc
            log.warning("%s: providers %s failed (%s); falling back to CPU", where,
                        [n for n, _ in chosen], exc)
            try:
                session = ort.InferenceSession(str(path), options, providers=[CPU])
            except Exception as cpu_exc:
                raise InferenceError(f"{where}: onnxruntime cannot load the model: {cpu_exc}") from cpu_exc
        inputs = {i.name for i in session.get_inputs()}
        outputs = {o.name for o in session.get_outputs()}
        outs = spec.outputs
        names = (outs.score, outs.channel_error, outs.latent_mean, outs.time_error)
        if spec.input.name not in inputs:
            raise InferenceError(f"{where}: graph has no input {spec.input.name!r}"
                                 f" (inputs: {sorted(inputs)})")
        missing = [n for n in names if n not in outputs]
        if missing:
            raise InferenceError(f"{where}: graph lacks outputs {missing} (outputs: {sorted(outputs)})")
        flat = spec.flatline.channels if spec.flatline is not None else ()
        loaded = _Loaded(spec, session, spec.input.name, names,
                         (len(spec.input.channels), spec.input.window_length),
                         np.array([spec.input.channels.index(c) for c in flat]) if flat else None)
        warm = np.zeros((1, *loaded.shape), dtype=np.float32)
        try:
            session.run(list(names), {loaded.input_name: warm})
        except Exception as exc:
            raise InferenceError(f"{where}: warm-up run failed: {exc}") from exc
        log.info("%s loaded on %s", where, ", ".join(session.get_providers()))
        return loaded

    def run_batch(self, model: str, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Synchronous `session.run` of one stacked batch; outputs keyed score/channel_error/...."""
        loaded = self._loaded(model)
        values = loaded.session.run(list(loaded.output_names), {loaded.input_name: batch})
        outputs = dict(zip(("score", "channel_error", "latent_mean", "time_error"), values, strict=True))
        flat = loaded.flat_mask(batch)  # the flat-line check, on the stacked batch and off the event loop
        if flat is not None:
            outputs["flat"] = flat
        return outputs

    def _batch(self, windows: Sequence[Window], chunk: Sequence[int], loaded: _Loaded) -> np.ndarray:
        for index in chunk:
            window = windows[index]
            if window.data.shape != loaded.shape:
                shape = window.data.shape
                raise InferenceError(f"window for asset {window.asset!r}, model {window.model!r} has shape "
                                     f"{shape}, expected {loaded.shape} (channels, window_length)")
        return np.stack([windows[index].data for index in chunk]).astype(np.float32, copy=False)

    def _infer(self, windows: Sequence[Window]) -> list[tuple[list[int], dict[str, np.ndarray]]]:
        """Runs in the worker thread: micro-batches per model of at most `max_batch` windows, each split
        over the helper threads when it is large enough (`_split`)."""
        groups: dict[str, list[int]] = {}
        for index, window in enumerate(windows):
            groups.setdefault(window.model, []).append(index)
        results: list[tuple[list[int], dict[str, np.ndarray]]] = []
        for model, indices in groups.items():
            loaded = self._loaded(model)
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                first, *rest = self._split(chunk)  # rest: only with helper threads (parallel_runs > 1)
                helpers = self._helpers
                helped = [(part, helpers.submit(self.run_batch, model, self._batch(windows, part, loaded)))
                          for part in rest if helpers is not None]
                results.append((first, self.run_batch(model, self._batch(windows, first, loaded))))
                results.extend((part, future.result()) for part, future in helped)
        return results

    def _split(self, chunk: list[int]) -> list[list[int]]:
        """`chunk` in up to `parallel_runs` consecutive parts of at least `MIN_PARALLEL_PART` windows."""
        count = min(self.settings.parallel_runs, len(chunk) // MIN_PARALLEL_PART)
        if count <= 1:
            return [chunk]
        bounds = [round(i * len(chunk) / count) for i in range(count + 1)]
        return [chunk[a:b] for a, b in itertools.pairwise(bounds)]

    async def score(self, windows: Sequence[Window]) -> list[ScoredWindow]:
        """Score windows (any mix of models) off the event loop; results in input order.

        Windows whose score is not finite (NaN/inf inputs) are dropped, logged and counted in
        `dropped_nonfinite`."""
        if not windows:
            return []
        windows = list(windows)
        loop = asyncio.get_running_loop()
        async with self._pending:
            results = await loop.run_in_executor(self._executor, self._infer, windows)
        slots: list[ScoredWindow | None] = [None] * len(windows)
        name, version = self.bundle_name, self.bundle_version
        for chunk, outputs in results:
            loaded = self._models[windows[chunk[0]].model]
            spec = loaded.spec
            threshold = float(spec.threshold.value)
            baseline = spec.score_baseline
            raws = outputs["score"].reshape(-1).tolist()
            channel_error, latent_mean, time_error = (outputs["channel_error"], outputs["latent_mean"],
                                                      outputs["time_error"])
            flats = loaded.flat_channels(outputs.get("flat"), len(chunk))
            all_finite = bool(np.isfinite(outputs["score"]).all())
            for row, index in enumerate(chunk):
                window = windows[index]
                raw = raws[row]
                if not all_finite and not math.isfinite(raw):
                    self.dropped_nonfinite += 1
                    log.warning("non-finite score for asset %s, model %s (window %.3f-%.3f); dropped",
                                window.asset, window.model, window.start_ts, window.end_ts)
                    continue
                flat = flats[row]
                adjusted = (raw if baseline is None else
                            self.baselines.adjust(window.asset, window.model, version, baseline, raw,
                                                  collect=not flat))
                slots[index] = ScoredWindow(window, adjusted, raw, threshold, channel_error[row],
                                            latent_mean[row], time_error[row], name, version, flat)
        return [item for item in slots if item is not None]

    def close(self) -> None:
        """Stop the worker thread after the windows already submitted are done."""
        self._executor.shutdown(wait=True)
        if self._helpers is not None:
            self._helpers.shutdown(wait=True)
