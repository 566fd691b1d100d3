"""Agent benchmarks (issue 5), JSON on stdout. Targets are reported, never asserted.

1. throughput: maximum sustained windows/s end to end (replay sources -> windows -> ONNX Runtime ->
   decisions -> SQLite) on one core for a 14x50 conv VAE, beside raw `session.run` windows/s (batch 64, one
   thread) for the same model in the same process. The process is pinned to one core and rates are per CPU
   second it used (robust to other load on a shared machine); wall-clock rates are reported too. The clock
   stops when every window is in the SQLite ring buffer (the store's writer thread is counted).
   Target: >= 35 % of raw.
2. latency: sensor sample published on MQTT -> alert received by a subscriber, p50/p99, at 50 assets x 14
   channels x 10 Hz (one JSON payload per asset and sample: 500 msg/s), twice: `burst` (every asset samples
   at the same instant, so each tick is a burst of 50 messages and, every stride, 50 windows: one PLC scan
   feeding all assets, the worst case) and `spread` (each asset at its own phase within the 100 ms period:
   independent devices). Target: p99 <= 10 ms, over the `open` alerts (two a second, rotating over the
   assets: about 340 in the default 180 s). The subscriber is a separate one-thread process; the
   publisher renders every sample into its MQTT packet before the clock starts and sends each with one
   `sendall` from the thread that timestamps it. `broker_path_only` is the same measurement for raw samples
   (publisher -> broker -> subscriber, no agent) in the same run: the floor this machine gives at that
   moment; `disk_commit_only` times a durable one-row SQLite commit (WAL, synchronous=FULL, as the outbox
   writes an alert) four times a second on the state directory's file system: the disk's floor. `--trace`
   runs the agent under `bench/agent_trace.py` and adds where the time of each `open` alert went (stages)
   and how long storage and file work took.
3. resources: CPU (% of one core) and resident memory of the agent process during benchmark 2, and the CPU
   the load generator, the broker and the subscriber took from the same two cores.
   Targets: <= 25 % of a core, <= 120 MB.

    nice .venv/bin/python bench/agent_bench.py --out bench/results/agent_bench.json [--quick]

The model is the trainer's ConvVAE (14 channels, window 50) exported with the exporter's own function; its
weights are random (speed does not depend on training). The agent runs as a subprocess for 2 and 3.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.report import emit  # noqa: E402

CHANNELS = [f"c{i:02d}" for i in range(14)]
LENGTH = 50
PERIOD = 0.1
IDENTITY = {"site": "bench", "area": "a", "line": "l", "id": "gw"}


def build_bundle(workdir: Path, stride: int, threshold: float | None = None) -> tuple[Path, Path, float]:
    """A signed bundle holding a 14x50 ConvVAE; returns (bundle, trusted keys dir, threshold used)."""
    import onnxruntime as ort
    import torch

    from edge_agent.bundle import read_bundle, write_bundle
    from export.onnx_graph import export_onnx
    from tests.support.bundles import TEST_SIGNING_KEY, build_test_bundle, write_test_public_key
    from trainer.torch_model import ConvVAE, ExportableScorer, VaeShape

    torch.manual_seed(0)
    keys = workdir / "keys"
    write_test_public_key(keys)
    base = build_test_bundle(workdir / "base", channels=CHANNELS, window_length=LENGTH, stride=stride,
                             sample_period_s=PERIOD, means=[0.0] * 14, stds=[1.0] * 14,
                             debounce={"k": 1, "n": 1, "clear_windows": 1})
    bundle = read_bundle(base, trusted_keys=keys, extract_to=workdir / "base-x")
    manifest = bundle.manifest.to_dict()
    scorer = ExportableScorer(ConvVAE(VaeShape(14, LENGTH)), {"kind": "standard", "mean": [0.0] * 14,
                                                                 "std": [1.0] * 14})
    rng = np.random.default_rng(0)
    normal = rng.standard_normal((512, 14, LENGTH)).astype(np.float32)
    onnx_path = workdir / "vae.onnx"
    export_onnx(scorer, onnx_path, normal)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    scores = sess.run(["score"], {"window": normal})[0].astype(np.float64)
    value = threshold if threshold is not None else float(scores.max() * 1.5)
    quantiles = {q: float(np.quantile(scores, float(q))) for q in ("0.5", "0.9", "0.99", "0.999")}
    reference = normal[:3]
    names = ["score", "channel_error", "latent_mean", "time_error"]
    outputs = dict(zip(names, sess.run(names, {"window": reference}), strict=True))
    np.savez(workdir / "reference.npz", window=reference, **outputs)
    latents = sess.run(["latent_mean"], {"window": normal})[0].astype(np.float64)
    model = manifest["models"][0]
    model.update(sha256=None, threshold={**model["threshold"], "value": value}, score_quantiles=quantiles,
                 severity=[{"level": "warning", "min_score": value}],
                 drift_reference={"latent_mean": latents.mean(0).tolist(),
                                  "latent_cov": np.cov(latents, rowvar=False).tolist(),
                                  "sample_latents": latents[:64].tolist(),
                                  "sample_scores": scores[:64].tolist()})
    model["reference"]["sha256"] = None
    manifest["files"] = {}
    out = workdir / "vae14x50.bundle"
    files = {model["file"]: onnx_path, model["reference"]["file"]: workdir / "reference.npz"}
    write_bundle(out, manifest, files, sign_key=TEST_SIGNING_KEY)
    return out, keys, value


def raw_windows_per_s(bundle_root: Path, model_file: str, seconds: float) -> tuple[float, float]:
    """`session.run` at batch 64 on one thread: windows per wall second and per CPU second."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle_root / model_file), options, providers=["CPUExecutionProvider"])
    batch = np.random.default_rng(1).standard_normal((64, 14, LENGTH)).astype(np.float32)
    names = ["score", "channel_error", "latent_mean", "time_error"]
    for _ in range(20):
        sess.run(names, {"window": batch})
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        sess.run(names, {"window": batch})
        done += 64
    return done / (time.perf_counter() - start), done / (time.process_time() - cpu)


def bench_throughput(workdir: Path, quick: bool) -> dict[str, Any]:
    """In-process agent fed by replay sources at full speed, pinned to one core."""
    from edge_agent.bundle import read_bundle
    from edge_agent.config import AgentConfig
    from edge_agent.supervisor import Supervisor
    from edge_agent.systemd import Notifier

    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    stride = 1
    bundle, keys, _ = build_bundle(workdir / "tp", stride=stride, threshold=1e9)  # no alerts: pure scoring
    assets, samples = (4, 1000) if quick else (8, 4000)
    rng = np.random.default_rng(2)
    sources, asset_cfg = {}, {}
    for a in range(assets):
        path = workdir / f"replay{a}.csv"
        data = rng.standard_normal((samples, 14))
        rows = ["ts," + ",".join(CHANNELS)] + [f"{i * PERIOD:.1f}," + ",".join(f"{v:.4f}" for v in row)
                                                for i, row in enumerate(data)]
        path.write_text("\n".join(rows) + "\n")
        sources[f"r{a}"] = {"type": "replay", "path": str(path), "timestamp_field": "ts", "speed": 0.0,
                            "fields": CHANNELS, "queue_size": 10000}
        asset_cfg[f"asset{a}"] = {"model": "pump", "source": f"r{a}", "channels": {c: c for c in CHANNELS}}
    document = {"state_dir": str(workdir / "tp-state"), "gateway": IDENTITY,
                "bundle": {"path": str(bundle), "trusted_keys": str(keys)}, "sources": sources,
                "assets": asset_cfg, "status_interval_s": 1.0}
    config = AgentConfig.from_dict(document, base_dir=workdir)
    expected = assets * (samples - LENGTH + 1) // stride
    supervisor = Supervisor(config, Notifier({}))
    timing: dict[str, float] = {}

    async def run() -> int:
        async def watch() -> None:
            # polling a counter is fine for a benchmark's stop condition (not synchronisation in a test)
            while supervisor.state.counters["windows_scored"] == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            timing["first"], timing["first_cpu"] = time.perf_counter(), time.process_time()
            first_count = supervisor.state.counters["windows_scored"]
            while supervisor.state.counters["windows_scored"] < expected:
                if supervisor._stop.is_set():
                    raise RuntimeError("agent stopped before all windows were scored")
                await asyncio.sleep(0.005)
            # scored windows are written to SQLite by the store's writer thread: count the CPU it spends
            # on them too, i.e. stop the clock once every window is in the ring buffer
            assert supervisor.store is not None
            while supervisor.store.window_count() < expected:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            timing["last"], timing["last_cpu"] = time.perf_counter(), time.process_time()
            timing["counted"] = supervisor.state.counters["windows_scored"] - first_count
            supervisor.request_stop()
        watcher = asyncio.create_task(watch())
        code = await supervisor.run()
        await watcher
        return code

    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    asyncio.run(run())
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - wall0
    end_to_end = timing["counted"] / (timing["last"] - timing["first"])
    end_to_end_cpu = timing["counted"] / (timing["last_cpu"] - timing["first_cpu"])
    extracted = read_bundle(bundle, trusted_keys=keys, extract_to=workdir / "tp-x")
    raw, raw_cpu = raw_windows_per_s(extracted.root, extracted.manifest.models[0].file, 2.0 if quick else 5.0)
    return {"windows": expected, "assets": assets, "stride": stride,
            # per CPU second of this process (pinned to one core): what one dedicated core sustains,
            # independent of other load on the machine; wall-clock rates beside them
            "end_to_end_windows_per_cpu_s": round(end_to_end_cpu, 1),
            "raw_session_run_windows_per_cpu_s": round(raw_cpu, 1),
            "ratio": round(end_to_end_cpu / raw_cpu, 3), "target_ratio": 0.35,
            "end_to_end_windows_per_s_wall": round(end_to_end, 1),
            "raw_session_run_windows_per_s_wall": round(raw, 1), "raw_batch": 64,
            "process_cpu_s": round(cpu, 2), "wall_s": round(wall, 2), "cores": 1}


def bench_latency(workdir: Path, quick: bool, phase: str = "burst", duration: float | None = None,
                  trace: bool = False, *, device_profile: str | None = None,
                  agents: int = 1) -> dict[str, Any]:
    """Agent subprocess; 50 assets x 14 channels x 10 Hz published on MQTT; anomalies injected in turn.

    `agents` > 1: that many agent processes, each with its own configuration, state directory and gateway
    id, take the assets in turn (asset a goes to agent a % agents): one gateway's assets split over
    processes, as separate service instances would (CPU and memory are their sums)."""
    if trace and agents != 1:
        raise ValueError("--trace runs one agent")
    import paho.mqtt.client as mqtt
    import tomli_w

    from bench.agent_trace import summarise
    from tests.support.broker import MosquittoBroker
    from tests.support.mqtt_packets import publish_packet

    workdir.mkdir(parents=True, exist_ok=True)
    stride = 10
    bundle, keys, threshold = build_bundle(workdir / "lat", stride=stride)
    # Nagle's algorithm can hold back small messages behind delayed ACKs; a broker for sensor traffic
    # should run with `set_tcp_nodelay true`, so the benchmark's broker does
    broker = MosquittoBroker(workdir / "broker", extra_config="set_tcp_nodelay true\n")
    broker.start()
    assets = 50
    if duration is None:  # two `open` alerts a second after the first 10 s: about 340 in 180 s, so the p99 is
        duration = 20.0 if quick else 180.0  # not decided by one or two slow alerts
    shards = []  # (config path, state dir, log path) per agent process
    for shard in range(agents):
        mine = [a for a in range(assets) if a % agents == shard]
        source = {"type": "mqtt", "host": broker.host, "port": broker.port, "payload": "json",
                  "fields": CHANNELS, "timestamp_field": "ts",
                  "topics": {f"plant/asset{a}/telemetry": f"a{a}" for a in mine}}
        asset_cfg = {f"asset{a}": {"model": "pump", "channels": {c: f"plant.a{a}.{c}" for c in CHANNELS}}
                     for a in mine}
        suffix = "" if agents == 1 else f"-{shard}"
        state = workdir / f"lat-state{suffix}"
        document = {"state_dir": str(state), "gateway": {**IDENTITY, "id": f"{IDENTITY['id']}{suffix}"},
                    "status_interval_s": 1.0,
                    "bundle": {"path": str(bundle), "trusted_keys": str(keys)}, "sources": {"plant": source},
                    "assets": asset_cfg,
                    "mqtt": {"host": broker.host, "port": broker.port, "max_inflight": 100},
                    "decisions": {"update_interval_s": 3600.0}, "logging": {"level": "warning"}}
        if device_profile is not None:  # its ONNX Runtime threads and providers instead of one CPU thread
            document["device_profile"] = device_profile
        config_path = workdir / f"lat{suffix}.toml"
        config_path.write_text(tomli_w.dumps(document))
        shards.append((config_path, state, workdir / f"agent{suffix}.log"))

    # The subscriber is its own process (one thread, stamping each alert on arrival), and the publisher
    # sends each sample from the thread that stamps it (no paho network thread): in one process, a paho
    # thread waits for the GIL while the publishing loop runs (up to the 5 ms switch interval), which
    # would add the benchmark's own delays to the agent's latency.
    alerts_path = workdir / "alerts.jsonl"
    # it also takes the samples of the first and the last asset published in each tick: the latency of
    # the broker path alone (publisher -> broker -> subscriber) on this machine during the run
    floor_topics = ["plant/asset0/telemetry", f"plant/asset{assets - 1}/telemetry"]
    sub = subprocess.Popen([sys.executable, "-c", _SUBSCRIBER, broker.host, str(broker.port),
                            str(alerts_path), "bench/a/l/+/anomaly/alert", *floor_topics],
                           stdout=subprocess.PIPE)
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != b"subscribed":
        raise RuntimeError("the alert subscriber did not subscribe")
    # the disk's own floor in the same run: a durable one-row SQLite commit (as an alert's outbox write)
    # four times a second, on the same file system as the agent's state directory
    probe = subprocess.Popen([sys.executable, "-c", _DISK_PROBE, str(workdir / "probe.db"), "0.25"],
                             stdout=subprocess.PIPE)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect(broker.host, broker.port)
    _nodelay(pub)
    while not pub.is_connected():
        pub.loop(timeout=0.1)

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    trace_path = workdir / "trace.json"
    launcher = ([str(REPO / "bench" / "agent_trace.py"), str(trace_path)] if trace
                else ["-m", "edge_agent.cli"])
    procs = [subprocess.Popen([sys.executable, *launcher, "run", "--config", str(config_path)],
                              env=env, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"))
             for config_path, _state, log_path in shards]
    pids = [proc.pid for proc in procs]
    published: dict[tuple[str, int], float] = {}
    try:
        deadline = time.time() + 60
        for proc, (_config, state, log_path) in zip(procs, shards, strict=True):
            while not (state / "status.json").exists():
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"agent did not start: {log_path.read_text()}")
                time.sleep(0.05)
        time.sleep(2.0)  # let the MQTT source subscribe
        rng = np.random.default_rng(3)
        assert broker._proc is not None
        others = {"load_generator": os.getpid(), "broker": broker._proc.pid, "subscriber": sub.pid}
        others_start: dict[str, float] = {}
        usage_start: tuple[float, float] | None = None
        rss_peak = 0
        anomaly_every = 10  # ticks (1 s) between injections, into two assets at a time, rotating
        # burst: every asset samples at the same instant (one PLC scan feeding all 50 assets, the worst
        # case); spread: each asset samples at its own phase within the period (independent devices)
        offsets = [0.0] * assets if phase == "burst" else [a * PERIOD / assets for a in range(assets)]
        # Every sample is rendered into its MQTT packet before the clock starts, and sent with one `sendall`
        # on the publisher's connection, so the load generator spends the run sending, not formatting: it
        # shares the two cores with the agent (`others_cpu_percent_of_one_core`).
        # Each sample carries its scheduled time (on the agent's grid); latency counts from the moment it
        # is actually published.
        ticks = round(duration / PERIOD)
        start = time.time() + 3.0 + ticks * assets * 20e-6  # rendering: about 20 us a payload
        schedule: list[tuple[float, str, bytes]] = []
        for tick in range(ticks):
            inject = tick > 100 and tick % anomaly_every < stride  # one stride of anomalous samples
            targets = {(tick // anomaly_every) % assets, (tick // anomaly_every + assets // 2) % assets}
            for a in range(assets):
                due = start + tick * PERIOD + offsets[a]
                values = rng.standard_normal(14)
                if inject and a in targets:
                    values[3] += 25.0
                payload = json.dumps({"ts": due, **{c: round(float(v), 4)
                                                    for c, v in zip(CHANNELS, values, strict=True)}}).encode()
                schedule.append((due, f"asset{a}", publish_packet(f"plant/asset{a}/telemetry", payload)))
        sock = pub.socket()
        assert isinstance(sock, socket.socket)
        sock.setblocking(True)
        for index, (due, asset, packet) in enumerate(schedule):
            if (delay := due - time.time()) > 0:
                time.sleep(delay)
            published[(asset, round(due * 1000))] = time.time()
            sock.sendall(packet)  # one pre-encoded QoS 0 PUBLISH: no client library work per sample
            if index % assets != assets - 1:
                continue
            pub.loop(timeout=0.0)  # once a tick: paho's keepalive (PINGREQ) and whatever the broker sent
            tick = index // assets
            if tick == 100:  # measure resources after warm-up
                usage_start = (sum(map(_cpu_seconds, pids)), time.time())
                others_start = {name: _cpu_seconds(pid) for name, pid in others.items()}
            if tick % 10 == 0:
                rss_peak = max(rss_peak, sum(map(_rss_kb, pids)))
        assert usage_start is not None
        elapsed = time.time() - usage_start[1]
        cpu_share = (sum(map(_cpu_seconds, pids)) - usage_start[0]) / elapsed
        # the rest of the benchmark shares the two cores with the agent: say how much of them it takes
        others_cpu = {name: round(100 * (_cpu_seconds(pid) - others_start[name]) / elapsed, 1)
                      for name, pid in others.items()}
        rss_now = sum(map(_rss_kb, pids))
        time.sleep(1.0)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        pub.disconnect()
        sub.terminate()
        sub.wait(30)
        probe.terminate()
        probe_out, _ = probe.communicate(timeout=30)
        broker.stop()
    commit_ms = np.asarray(json.loads(probe_out or b"[]"))
    latencies = []
    by_state: dict[str, list[float]] = {}
    received, floor, floor_sent = [], [], []
    opens: list[tuple[str, float, float, float]] = []
    for when, topic, doc in (json.loads(line) for line in alerts_path.read_text().splitlines()):
        if topic in floor_topics:
            sent_at = published.get((f"asset{topic.split('/')[1].removeprefix('asset')}",
                                     round(doc["ts"] * 1000)))
            if sent_at is not None:
                floor.append((when - sent_at) * 1000.0)
                floor_sent.append(sent_at)
        else:
            received.append((when, doc))
    for when, alert in received:
        end = alert["window"]["end"]
        end_ts = _parse_rfc3339(end)
        key = round(end_ts * 1000)  # RFC 3339 times carry truncated milliseconds
        sent = next((published[(alert["asset"], k)] for k in (key, key + 1, key - 1)
                     if (alert["asset"], k) in published), None)
        if sent is None:
            continue
        by_state.setdefault(alert["state"], []).append(round((when - sent) * 1000.0, 1))
        if alert["state"] == "open":  # an open is decided on the window ending at that sample;
            latencies.append((when - sent) * 1000.0)  # update/close carry the episode's peak window
            opens.append((alert["asset"], end_ts, sent, when))
    lat = np.asarray(latencies)
    path_ms = np.asarray(floor)
    path_sent = np.asarray(floor_sent)
    # for the slowest alerts: the slowest broker-path sample sent within 0.5 s of the alert's sample. When
    # that is slow too, the whole machine stalled (the agent was not the only one late)
    slowest = sorted(zip(latencies, (sent for _a, _e, sent, _w in opens), strict=True), reverse=True)[:5]
    worst = [{"ms": round(ms, 1), "broker_path_max_ms_within_0_5_s": round(float(
        path_ms[np.abs(path_sent - sent) <= 0.5].max(initial=0.0)), 1)} for ms, sent in slowest]
    return {
        "latency": {"alerts": len(received), "open_alerts_measured": int(lat.size),
                    "p50_ms": round(float(np.percentile(lat, 50)), 2) if lat.size else None,
                    "p99_ms": round(float(np.percentile(lat, 99)), 2) if lat.size else None,
                    "max_ms": round(float(lat.max()), 2) if lat.size else None, "target_p99_ms": 10.0,
                    "worst": worst,
                    "open_samples_ms": by_state.get("open") if quick else None,
                    "broker_path_only": {
                        "samples": int(path_ms.size),
                        "p50_ms": round(float(np.percentile(path_ms, 50)), 2) if path_ms.size else None,
                        "p99_ms": round(float(np.percentile(path_ms, 99)), 2) if path_ms.size else None,
                        "max_ms": round(float(path_ms.max()), 2) if path_ms.size else None},
                    "disk_commit_only": {
                        "commits": int(commit_ms.size),
                        "p50_ms": round(float(np.percentile(commit_ms, 50)), 2) if commit_ms.size else None,
                        "p99_ms": round(float(np.percentile(commit_ms, 99)), 2) if commit_ms.size else None,
                        "max_ms": round(float(commit_ms.max()), 2) if commit_ms.size else None},
                    "load": {"assets": assets, "channels": 14, "rate_hz": 10, "messages_per_s": assets * 10,
                             "phase": phase, "agent_processes": agents,
                             "window": LENGTH, "stride": stride, "duration_s": duration}},
        "resources": {"cpu_percent_of_one_core": round(100 * cpu_share, 1),
                      "others_cpu_percent_of_one_core": others_cpu,
                      "rss_mb": round(rss_now / 1024, 1),
                      "rss_peak_mb": round(rss_peak / 1024, 1), "target_cpu_percent": 25.0,
                      "target_rss_mb": 120.0},
        "threshold": threshold,
        **({"trace": summarise(json.loads(trace_path.read_text()), opens)} if trace else {}),
    }


_SUBSCRIBER = """
import json, signal, socket, sys, time
import paho.mqtt.client as mqtt
host, port, path, topics = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
out = open(path, "w", buffering=1)
def on_message(_c, _u, msg):
    out.write(json.dumps([time.time(), msg.topic, json.loads(msg.payload)]) + "\\n")
def on_subscribe(*_a):
    print("subscribed", flush=True)
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
client.on_message, client.on_subscribe = on_message, on_subscribe
client.connect(host, port)
client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
client.subscribe([(topic, 1) for topic in topics])
signal.signal(signal.SIGTERM, lambda *_a: client.disconnect())
client.loop_forever()
out.close()
"""


_DISK_PROBE = """
import json, signal, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=WAL")
conn.execute("PRAGMA synchronous=FULL")
conn.execute("CREATE TABLE IF NOT EXISTS t (ts REAL, payload BLOB)")
period, times, running = float(sys.argv[2]), [], [True]
signal.signal(signal.SIGTERM, lambda *_a: running.pop())
while running:
    time.sleep(period)
    start = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t VALUES (?, ?)", (time.time(), b"x" * 600))
    conn.execute("COMMIT")
    times.append((time.perf_counter() - start) * 1000.0)
print(json.dumps(times))
"""


def _nodelay(client: Any) -> None:
    sock = client.socket()
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kb(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    return 0


def _parse_rfc3339(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test of the script)")
    parser.add_argument("--only", choices=("throughput", "latency"), default=None)
    parser.add_argument("--phase", choices=("burst", "spread", "both"), default="both",
                        help="latency load: all assets sample at the same instant (burst), at their own "
                             "phases within the period (spread), or both runs")
    parser.add_argument("--trace", action="store_true",
                        help="run the agent under bench/agent_trace.py and add per-stage latencies of the "
                             "`open` alerts and storage/file timings (costs some CPU: not for headline runs)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of load per latency run (default 180, --quick 20)")
    parser.add_argument("--device-profile", default=None,
                        help="latency runs: the agent's `device_profile` (a name in device_profiles/ or a "
                             "path; default none: the CPU provider on one thread)")
    parser.add_argument("--agents", type=int, default=1,
                        help="latency runs: split the assets over this many agent processes (asset a to "
                             "process a %% N; each its own config, state directory and gateway id)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()
    if args.agents < 1 or (args.trace and args.agents != 1):
        parser.error("--agents must be at least 1, and --trace runs one agent")
    import logging

    logging.basicConfig(level=logging.WARNING)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "quick": args.quick,
                               "device_profile": args.device_profile, "agent_processes": args.agents}
    with tempfile.TemporaryDirectory(prefix="agent-bench-") as tmp:
        if args.only in (None, "throughput"):
            results["throughput"] = bench_throughput(Path(tmp), args.quick)
        if args.only in (None, "latency"):
            for phase in (("burst", "spread") if args.phase == "both" else (args.phase,)):
                run = bench_latency(Path(tmp) / phase, args.quick, phase, args.duration, args.trace,
                                    device_profile=args.device_profile, agents=args.agents)
                for key, value in run.items():
                    results.setdefault(key, {})[phase] = value
    return emit(results, args.out)


if __name__ == "__main__":
    sys.exit(main())
