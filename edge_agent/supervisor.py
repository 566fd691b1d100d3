"""The agent process: one TaskGroup, named tasks, ordered start and stop, restart budget, signals.

Start order: sink (upstream MQTT or console) -> storage (retention) -> detector (inference + decisions) ->
sources. Stop in reverse: sources stop first, the detector drains the windows already queued, the sink gets
a bounded time to deliver what is in flight and says `offline`, then the database closes.

- A task that fails is restarted; more than 5 failures in 60 s take the process down (exit 1) so systemd
  restarts it.
- SIGTERM/SIGINT drain and exit 0. SIGHUP re-reads the config: an unchanged config with a newly activated
  bundle (`edge-agent bundle install`) swaps the bundle between windows (`swap_bundle`); any other change
  restarts the pipeline inside the process; an invalid config is logged and ignored.
- READY=1 goes to systemd once the models are loaded and the database is open (the broker may be down).
  WATCHDOG=1 pings run from the first READY=1 to exit, through in-process restarts (RELOADING=1 with
  MONOTONIC_USEC ... READY=1). An in-process restart rebuilds the upstream sink too: SCADA sees the
  retained status go `offline` then `online` (docs/alerts.md).
- An alert whose outbox write fails (database locked, disk full) stays in memory and is written with the
  next batch or by the status loop (`pipeline.AlertWriter`); nothing decided is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge_agent.agentstate import AgentState, write_status_file
from edge_agent.bundle import Bundle
from edge_agent.compat import TaskGroup
from edge_agent.config import AgentConfig
from edge_agent.configtools import ConfigError
from edge_agent.decisions import DecisionEngine
from edge_agent.inference import InferenceEngine
from edge_agent.logtools import RateLimitedLog
from edge_agent.pipeline import (
    AlertWriter,
    FatalTaskError,
    Rendered,
    RestartBudget,
    build_sink,
    build_windower,
    find_fatal,
    load_bundle,
    provider_settings,
    sink_name,
)
from edge_agent.sources import Source, build_source
from edge_agent.sources.base import FairDropQueue
from edge_agent.storage import FULL_OR_READ_ONLY_ERRNOS, StorageError, Store, WindowRecorder
from edge_agent.systemd import Notifier
from edge_agent.types import AlertEvent, Reading, ScoredWindow, Window
from edge_agent.windows import Windower

log = logging.getLogger(__name__)

__all__ = ["FatalTaskError", "RestartBudget", "Supervisor", "load_bundle", "provider_settings"]

WINDOW_QUEUE_SIZE = 10_000
BATCH_SIZE = 256
PIPELINE_BATCHES = 16  # batches scored back to back before the detector lets a bundle swap in
PRUNE_INTERVAL_S = 60.0
# a closing pipeline tries this often (each try waits 0.25 s for the database, then 0.25 s more) to write
# alerts the database refused before it gives up (keeping them for the next pipeline on a reload)
CLOSE_ALERT_ATTEMPTS = 10
# The event loop shares the GIL with the inference thread and the storage threads (WAL keeper, status file).
# CPython lets a thread keep the GIL for 5 ms before it must hand it to a waiting one: long next to a 10 ms
# sample-to-alert budget. The agent asks for a hand-over every 1 ms while it runs.
GIL_SWITCH_INTERVAL_S = 0.001
_find_fatal = find_fatal


def _freeze_long_lived_objects() -> None:
    """Move what is alive now (modules, the bundle, ONNX Runtime sessions, config) out of the cyclic
    garbage collector's reach: a full collection otherwise scans all of it, which paused the event loop for
    about 20 ms twice a minute at 500 messages/s (docs/deployment.md, "Performance"). `unfreeze` first, so
    a reloaded pipeline's predecessor is collected rather than kept frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime in ns) of `path`: a bundle file overwritten in place, or replaced by a rename,
    at the same path reads as changed on a reload."""
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def _write_pid_file(path: Path) -> None:
    """The pid file `status` and `bundle install` read. A full or read-only disk does not stop the start (the
    state database then runs in memory, docs/storage.md "Faults"): logged, and without the file `bundle
    install` cannot tell the running agent (restart it after an install); other errors do."""
    try:
        path.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        if exc.errno not in FULL_OR_READ_ONLY_ERRNOS:
            raise
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)  # a truncated file names no process (a read-only one stays)
        log.error("cannot write the pid file %s (%s): starting without it; `edge-agent bundle install` "
                  "cannot notify this agent until it is restarted on a writable state directory with free "
                  "space", path, exc.strerror)


def _hold_instance_lock(config: AgentConfig) -> tuple[int, ...]:
    """Take the instance lock (exclusive `flock`s, released by the kernel when the process ends, however it
    ends) and return the descriptors to close: one agent per state directory. A second one, such as a
    hand-started `edge-agent run` next to the service, would share the database and the MQTT client id (the
    broker would drop each for the other) and delete the other's pid file: it is refused, naming the
    running agent's pid.

    Two locks, both always tried: the state directory itself (a read-only open, so it can always be taken,
    even on a read-only or full disk) and `state_dir/agent.lock` (what agents before the directory lock
    took; created when the disk allows, else opened read-only when a former start left it, else left out).
    Checkers (`agentstate.agent_lock_held`) look at both."""
    held: list[int] = []
    try:
        for path, create in ((config.state_dir, False), (config.lock_path, True)):
            fd = _open_lock(path, create)
            if fd is None:
                continue
            held.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        for fd in held:
            os.close(fd)
        try:
            pid = config.pid_path.read_text().strip()
        except OSError:
            pid = ""
        running = f"another agent (pid {pid})" if pid.isdigit() else "another agent"
        raise ConfigError("state_dir", f"{running} is running with this state directory: stop it first "
                          "(systemctl stop edge-agent), or give this one a state_dir of its own",
                          str(config.state_dir), config.source) from None
    except BaseException:
        for fd in held:
            os.close(fd)
        raise
    return tuple(held)


def _open_lock(path: Path, create: bool) -> int | None:
    """A descriptor to `flock`: the directory `path` (`create` false), or the lock file, created when the disk
    allows (a read-only or full disk: the one a former start left, opened read-only, else None)."""
    if not create:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno not in FULL_OR_READ_ONLY_ERRNOS:
            raise
    log.warning("cannot create the instance lock file %s (a read-only or full disk): locking it read-only, "
                "or the state directory alone", path)
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


class Supervisor:
    """Runs the pipeline for one config until stopped; see the module docstring for the lifecycle."""

    def __init__(self, config: AgentConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.state = AgentState()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._swap_lock = asyncio.Lock()
        self._windows: FairDropQueue[Window] = self._window_queue()
        self._budgets: dict[str, RestartBudget] = {}
        self.store: Store | None = None
        self.recorder: WindowRecorder | None = None
        self.bundle: Bundle | None = None
        self.engine: Any = None
        self.decisions: DecisionEngine | None = None
        self.sink: Any = None
        self.windower: Windower | None = None
        self.sources: list[Source] = []
        self.alerts: AlertWriter | None = None
        # a full disk fails these every status_interval_s: logged at first, then once a minute with a count
        self._status_file_log = RateLimitedLog(log, 60.0)
        self._counters_log = RateLimitedLog(log, 60.0)
        self._carried_alerts: list[Rendered] = []  # alerts a closing pipeline could not write, for the next
        self._watchdog: asyncio.Task[None] | None = None
        self._status_io: asyncio.Future[dict[str, int]] | None = None  # the status loop's write (a thread)
        self.ever_ready = False  # READY=1 was sent once: a later failure is a crash, not a failed start
        self._bundle_stamp: tuple[int, int, int] | None = None  # of the loaded bundle file (`_file_stamp`)

    # control ---------------------------------------------------------------------------------------------
    def request_stop(self) -> None:
        log.info("stop requested: draining")
        self._stop.set()

    def request_reload(self) -> None:
        log.info("reload requested")
        self._reload.set()

    async def run(self) -> int:
        """Run until SIGTERM (0) or a task out of restart budget (1)."""
        loop = asyncio.get_running_loop()
        for signum, handler in ((signal.SIGTERM, self.request_stop), (signal.SIGINT, self.request_stop),
                                (signal.SIGHUP, self.request_reload)):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, handler)
        instance_lock: tuple[int, ...] = ()
        try:
            try:
                self.config.state_dir.mkdir(parents=True, exist_ok=True)
                instance_lock = _hold_instance_lock(self.config)
                _write_pid_file(self.config.pid_path)
            except OSError as exc:
                raise ConfigError("state_dir", f"cannot write the state directory: {exc.strerror or exc} "
                                  "(StateDirectory= in the unit makes it)", str(self.config.state_dir),
                                  self.config.source) from exc
            return await self._run_pipelines()
        finally:
            for fd in instance_lock:
                os.close(fd)  # after the pid file is gone: the next agent may start

    async def _run_pipelines(self) -> int:
        switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(switch_interval, GIL_SWITCH_INTERVAL_S))
        try:
            while True:
                restart = await self._run_pipeline()
                if not restart:
                    return 0
                self.notifier.reloading()
                # their counts move into the state's totals; cleared so nothing counts them twice before the
                # next pipeline builds its own
                self.state.sources_retired(self.sources)
                self.sources = []
        except Exception as exc:
            fatal = _find_fatal(exc)
            if fatal is None:
                raise
            log.critical("%s", fatal)
            return 1
        finally:
            if self._watchdog is not None:
                self._watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watchdog
            self.notifier.stopping()
            sys.setswitchinterval(switch_interval)
            gc.unfreeze()  # whatever the process does next (tests run many supervisors) collects normally
            with contextlib.suppress(OSError):  # a read-only state disk keeps an old one (lock says stopped)
                self.config.pid_path.unlink(missing_ok=True)

    # pipeline --------------------------------------------------------------------------------------------
    @property
    def _run_dir(self) -> Path:
        return self.config.run_dir

    async def open_pipeline(self) -> None:
        """Open the database, load the bundle and build engine, decisions, windower, sink and sources."""
        config = self.config
        shutil.rmtree(self._run_dir, ignore_errors=True)
        # in a thread: its quick_check reads the whole file, and on a reload the watchdog pings go on
        self.store = await asyncio.to_thread(Store.open, config.db_path, config.retention,
                                             memory_fallback=True)
        self.recorder = WindowRecorder(self.store)
        self.bundle = await asyncio.to_thread(load_bundle, config, self._run_dir)
        self._bundle_stamp = _file_stamp(self.bundle.source)
        self.engine = await asyncio.to_thread(self._build_engine, self.bundle)
        self.decisions = DecisionEngine(config.decisions, config.identity, self.store, self.bundle.manifest)
        self.windower = build_windower(config, self.bundle)
        self.sink = build_sink(config, self.store, self.health)
        self.alerts = AlertWriter(self.store, config.identity, self.sink.alert_topic, self.sink.wake)
        if hasattr(self.sink, "memory"):  # the MQTT sink also sends what the outbox could not take
            self.sink.memory = self.alerts
        # alerts the pipeline before a reload could not write: first in line
        self.alerts.unstored, self._carried_alerts = self._carried_alerts, []
        assets = {(a.name, a.model) for a in config.assets.values()}
        self._store_alerts(self.decisions.orphaned_episodes(time.time(), assets))
        self.sources = [build_source(name, src.kind, src.settings) for name, src in config.sources.items()]
        self.state.started(self.bundle)

    async def close_pipeline(self) -> None:
        """Commit what is left (windows, unstored alerts, counters), then close engine and database."""
        if self.recorder is not None:
            self.recorder.close()  # the detector has drained: commit the last scored windows
        if self.alerts is not None:
            for _attempt in range(CLOSE_ALERT_ATTEMPTS):  # the database may be held by another process
                if self.alerts.retry():
                    break
                await asyncio.sleep(0.25)
            if self.alerts.unstored:  # kept for the next pipeline (a reload); lost only if the process ends
                self._carried_alerts = self.alerts.unstored
                log.error("%d alerts could not be written to the outbox before the pipeline stopped",
                          len(self.alerts.unstored))
        if self._status_io is not None:  # the status loop's last write lands before the final one
            await asyncio.gather(self._status_io, return_exceptions=True)
            self._status_io = None
        self._write_status()
        self.state.windower_retired(self.windower)
        self.windower = None
        if self.engine is not None:
            engine, self.engine = self.engine, None
            self.state.engine_retired(engine)
            await asyncio.to_thread(engine.close)
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)

    async def _run_pipeline(self) -> bool:
        """One life of the pipeline; True when it should start again with a reloaded config."""
        try:
            await self.open_pipeline()
            _freeze_long_lived_objects()
            assert self.bundle is not None
            manifest = self.bundle.manifest
            self.notifier.ready(f"scoring {len(self.config.assets)} assets with {manifest.name} "
                                f"{manifest.version}")
            self.ever_ready = True
            if self._watchdog is None:
                # from the first READY=1 to the end of the run: one watchdog, so pings go on while a
                # reload reopens the database, reloads the bundle and rebuilds the ONNX Runtime sessions
                self._watchdog = asyncio.create_task(self.notifier.watchdog_loop(), name="systemd[watchdog]")
            log.info("agent ready: bundle %s %s, %d assets, %d sources", manifest.name, manifest.version,
                     len(self.config.assets), len(self.sources))
            return await self._run_tasks()
        finally:
            await self.close_pipeline()

    async def _run_tasks(self) -> bool:
        upstream = (self.config.mqtt, self.config.identity)
        async with TaskGroup() as group:
            sink = self._supervised("sink", self.sink.run)
            sink_task = group.create_task(sink, name=sink_name(self.config))
            storage = group.create_task(self._supervised("storage", self._prune_loop),
                                        name="storage[retention]")
            detector = group.create_task(self._supervised("detector", self._detect_loop), name="detector")
            status = group.create_task(self._supervised("status", self._status_loop), name="status")
            source_tasks = [group.create_task(self._supervised(src.task_name, self._source_loop, src),
                                              name=src.task_name) for src in self.sources]
            restart = await self._wait_for_stop_or_reload()
            # reverse order: sources, then drain the detector, then the sink, then storage
            for task in source_tasks:
                task.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            self._windows.close()
            await detector
            # a restart for a changed config that keeps the same upstream: subscribers see no `offline`
            # between the two `online`s (the status topic is retained; SCADA alarms on `offline`)
            same_upstream = upstream == (self.config.mqtt, self.config.identity)
            await self.sink.aclose(restarting=restart and same_upstream)
            await sink_task
            for task in (storage, status):
                task.cancel()
        self._windows = self._window_queue()
        return restart

    async def _wait_for_stop_or_reload(self) -> bool:
        while True:
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._stop.is_set():
                return False
            self._reload.clear()
            if await self._apply_reload():
                return True

    def _reload_rejected(self, error: str) -> bool:
        """Log a refused reload and keep it for the status (`reload_rejected`) until one goes through."""
        log.error("reload ignored, the running config and bundle stay: %s", error)
        self.state.reload_outcome(error)
        return False

    async def _apply_reload(self) -> bool:
        """Reload the config; True when the pipeline must restart (False: nothing to do or swapped)."""
        if self.config.source is None:
            log.warning("reload ignored: the config was not loaded from a file")
            return False
        try:
            new = await asyncio.to_thread(AgentConfig.load, self.config.source)
        except ConfigError as exc:
            return self._reload_rejected(str(exc))
        if new.state_dir.resolve() != self.config.state_dir.resolve():
            # the instance lock and pid file are on the running state directory: moving to another one
            # would run unlocked there (a second agent could start on it) and leave the old pid file behind
            return self._reload_rejected(
                f"state_dir changed ({self.config.state_dir} -> {new.state_dir}); a new state directory "
                "needs a restart (systemctl restart edge-agent)")
        if new != self.config:
            check_dir = Path(tempfile.mkdtemp(prefix="reload-check-"))
            try:  # the new config must work with its bundle before the running pipeline is stopped
                await asyncio.to_thread(load_bundle, new, check_dir)
            except Exception as exc:  # noqa: BLE001 - any failure keeps the running pipeline
                return self._reload_rejected(str(exc))
            finally:
                shutil.rmtree(check_dir, ignore_errors=True)
            log.info("config changed: restarting the pipeline")
            self.state.reload_outcome(None)
            self.config = new
            return True
        assert self.bundle is not None
        try:
            path = new.bundle_path()
            if path.resolve() == self.bundle.source.resolve() and _file_stamp(path) == self._bundle_stamp:
                log.info("reload: config and bundle unchanged")
                self.state.reload_outcome(None)
                return False
            bundle = await asyncio.to_thread(load_bundle, new, new.run_dir)
        except Exception as exc:  # any bad bundle (or a damaged store) keeps the running one  # noqa: BLE001
            return self._reload_rejected(f"new bundle not loaded, keeping {self.bundle.manifest.name} "
                                         f"{self.bundle.manifest.version}: {exc}")
        await self.swap_bundle(bundle)
        self.state.reload_outcome(None)
        return False

    async def swap_bundle(self, new_bundle: Bundle) -> None:
        """Replace the models between windows: windows being scored finish on the old engine; episodes of
        models that vanished are closed. Same window shapes: queued and new windows use the new engine.
        Other shapes: windowing is rebuilt at once, the windows already queued (cut by the old windower)
        are scored on the old engine first, and any old-shape window still arriving is dropped, counted
        (`windows_dropped`). The old engine is closed once drained."""
        engine = await asyncio.to_thread(self._build_engine, new_bundle)
        async with self._swap_lock:
            old = self.bundle
            assert self.decisions is not None
            assert old is not None
            if [m.input for m in old.manifest.models] != [m.input for m in new_bundle.manifest.models]:
                self.state.windower_retired(self.windower)
                self.windower = build_windower(self.config, new_bundle)  # new windows: the new shape
                queued = self._take_batch(WINDOW_QUEUE_SIZE)  # no await since: all of the old shape
                for start in range(0, len(queued), BATCH_SIZE):
                    await self._score(queued[start:start + BATCH_SIZE])
            old_engine = self.engine
            if old_engine is not None:  # an asset in an episode keeps its baseline until healthy
                engine.baselines.carry_over(old_engine.baselines, self._in_episode())
            self.engine = engine
            self.state.engine_retired(old_engine)
            self.bundle = new_bundle
            self._bundle_stamp = _file_stamp(new_bundle.source)
            self._store_alerts(self.decisions.swap_manifest(new_bundle.manifest, time.time()))
            self.state.bundle_swapped(new_bundle)
            log.info("bundle swapped: %s %s -> %s %s", old.manifest.name, old.manifest.version,
                     new_bundle.manifest.name, new_bundle.manifest.version)
            shutil.rmtree(old.root, ignore_errors=True)
        if old_engine is not None:
            await asyncio.to_thread(old_engine.close)  # drained: no batch of it is in flight
        self._write_status()

    def _build_engine(self, bundle: Bundle) -> Any:
        return InferenceEngine(bundle, provider_settings(self.config), store=self.store)

    # tasks -----------------------------------------------------------------------------------------------
    async def _supervised(self, name: str, func: Callable[..., Awaitable[None]], *args: Any) -> None:
        budget = self._budgets.setdefault(name, RestartBudget())
        while True:
            try:
                await func(*args)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not budget.spend():
                    raise FatalTaskError(f"task {name} failed more than {budget.allowed} times in "
                                         f"{budget.window_s:.0f} s; last error: {exc!r}") from exc
                log.exception("task %s failed; restarting", name)
                await asyncio.sleep(0.5)

    async def _source_loop(self, source: Source) -> None:
        async with source:
            if not source.lossless:
                await source.deliver(self._push_reading)
                return
            async for reading in source:  # a replay: waits for room instead of having windows dropped
                windower = self.windower
                assert windower is not None
                for window in windower.push(reading):
                    await self._windows.wait_for_room()
                    self._windows.put(window)

    def _push_reading(self, reading: Reading) -> None:
        windower = self.windower
        assert windower is not None
        for window in windower.push(reading):
            self._windows.put(window)

    async def _detect_loop(self) -> None:
        while True:
            first = await self._windows.get()
            if first is None:
                return
            # one loop turn for readings already delivered to complete their windows too: a burst of
            # windows becomes one micro-batch instead of many small ones
            await asyncio.sleep(0)
            async with self._swap_lock:
                await self._score_pipelined([first, *self._take_batch(BATCH_SIZE - 1)])

    async def _score_pipelined(self, batch: list[Window]) -> None:
        """Score `batch` and the windows that arrive meanwhile, two stages deep: as soon as one batch's
        scores are back, the windows that arrived during its inference go to the inference thread, and
        the loop decides on the first batch (decisions, outbox commit, sink) while they are scored.
        Batches are decided in order. At most `PIPELINE_BATCHES` in a row, so a bundle swap waiting for
        the lock gets its turn under sustained load."""
        running = self._start_scoring(batch)
        chained = 1
        try:
            while running is not None:
                scored = await running
                running = None
                if chained < PIPELINE_BATCHES:
                    running = self._start_scoring(self._take_batch(BATCH_SIZE))
                    chained += 1
                self._decide(scored)
        except BaseException:
            if running is not None:  # the detector fails (and is restarted): nothing waits for this batch
                running.cancel()
            raise

    def _take_batch(self, limit: int = BATCH_SIZE) -> list[Window]:
        batch: list[Window] = []
        while len(batch) < limit and (item := self._windows.get_nowait()) is not None:
            batch.append(item)
        return batch

    def _start_scoring(self, batch: list[Window]) -> asyncio.Task[list[ScoredWindow]] | None:
        """Hand the windows of the active bundle's shapes to the inference thread (None: nothing to do)."""
        assert self.bundle is not None
        shapes = {model.name: (len(model.input.channels), model.input.window_length)
                  for model in self.bundle.manifest.models}
        windows = [w for w in batch if shapes.get(w.model) == w.data.shape]
        if len(windows) != len(batch):  # a model gone, or a window cut for another shape: counted
            self.state.counters["windows_dropped"] += len(batch) - len(windows)
        if not windows:
            return None
        return asyncio.ensure_future(self.engine.score(windows))  # one hand-off per batch

    async def _score(self, batch: list[Window]) -> None:
        """Score and decide on one batch (no pipelining)."""
        running = self._start_scoring(batch)
        if running is not None:
            self._decide(await running)

    def _decide(self, scored: list[ScoredWindow]) -> None:
        assert self.decisions is not None
        assert self.recorder is not None
        events = self.decisions.process_batch(scored, time.time())
        if self.engine.baselines.carried:
            self.engine.baselines.release(self._in_episode())
        self._store_alerts(events)  # in the outbox (committed) before the sink is woken
        self.state.scored_batch(scored)
        # the ring buffer is written by the recorder's thread: the loop goes straight back to windows
        # and the sink, so a burst's alerts never wait for its rows
        self.recorder.submit(scored)

    def _in_episode(self) -> set[tuple[str, str]]:
        assert self.decisions is not None
        return {(row["asset"], row["model"]) for row in self.decisions.open_episodes()}

    def _store_alerts(self, events: list[AlertEvent]) -> None:
        """Into the outbox (committed) before the sink is woken; kept in memory if the write fails."""
        if self.alerts is not None and (events or self.alerts.unstored):
            self.alerts.write(events)

    async def _prune_loop(self) -> None:
        while True:
            assert self.store is not None
            removed = await self.store.prune_async()
            if removed:
                log.debug("retention pruned %d rows", removed)
            await asyncio.sleep(PRUNE_INTERVAL_S)

    async def _status_loop(self) -> None:
        while True:
            if self.alerts is not None and self.alerts.unstored:
                async with self._swap_lock:
                    self.alerts.retry()
            await self._report_silence()
            # the snapshot is taken on the loop; the file and the counters transaction go to a thread, so
            # a slow disk (or the ring buffer's writer holding the store) never stalls the windows
            snapshot, deltas = self.snapshot(), self.state.take_counter_deltas(self)
            loop = asyncio.get_running_loop()
            self._status_io = loop.run_in_executor(None, self._write_status_io, snapshot, deltas)
            unstored = await asyncio.shield(self._status_io)  # cancelled or not, close_pipeline waits for it
            self.state.unpersist(unstored)
            await asyncio.sleep(self.config.status_interval_s)

    async def _report_silence(self) -> None:
        """An open episode whose asset went silent (no window scored: `AgentState.freshness`) gets its
        `reason: no_data` update (`DecisionEngine.silent`), once per silence."""
        if self.decisions is None:
            return
        waiting = {row["asset"] for row in self.decisions.open_episodes()}
        if any(self.state.freshness(self, name)["silent"] for name in waiting):
            async with self._swap_lock:  # the detector may have scored the asset meanwhile: judge again
                silent = [name for name in sorted(waiting) if self.state.freshness(self, name)["silent"]]
                self._store_alerts([event for name in silent
                                    for event in self.decisions.silent(name, time.time())])

    def _window_dropped(self) -> None:
        self.state.counters["windows_dropped"] += 1

    def _window_queue(self) -> FairDropQueue[Window]:
        """Windows on their way to the detector: per asset, so a flooded asset drops its own oldest
        windows and another asset's are still scored, in turn (`FairDropQueue`)."""
        return FairDropQueue(WINDOW_QUEUE_SIZE, self._window_dropped, key=lambda window: window.asset)

    # status ----------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Everything `edge-agent status` shows, as a JSON-able dict."""
        return self.state.snapshot(self)

    def health(self) -> dict[str, Any]:
        """The periodic health summary the MQTT sink publishes (status.schema.json `health`)."""
        return self.state.health(self)

    def _write_status(self) -> None:
        self.state.unpersist(self._write_status_io(self.snapshot(), self.state.take_counter_deltas(self)))

    def _write_status_io(self, snapshot: dict[str, Any], deltas: dict[str, int]) -> dict[str, int]:
        """Write the status file and add `deltas` to the stored counters; returns the deltas not stored
        (the database locked by another process, say), to be added with the next ones."""
        try:
            write_status_file(self.config.status_path, snapshot)
        except (OSError, ValueError) as exc:
            self._status_file_log.warning("cannot write status file %s: %s", self.config.status_path, exc)
        if self.store is None or not deltas:
            return {}
        try:
            self.store.incr_counters(deltas)
        except (sqlite3.Error, StorageError, OSError) as exc:
            self._counters_log.warning("%s: counters not stored yet (kept, added with the next ones): %s",
                                       self.store.path, exc)
            return deltas
        return {}
