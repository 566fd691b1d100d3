"""The one-command demo: simulate -> train -> export -> install -> run the agent live -> score its alerts.

Run through `bash scripts/demo.sh` (which sets up the virtualenv and mosquitto first). Everything it makes
goes under `.demo/` (or `--workdir`), started afresh each run:

1. healthy training data for three pumps from the built-in plant simulator (`edge_agent.simulator`);
2. `edge-trainer fit` on it (a Conv1D VAE), `edge-trainer keygen`, `edge-trainer export` (a signed bundle);
3. `edge-agent bundle install` into the agent's state directory (signature, safety, reference checks);
4. a private mosquitto, the agent (`edge-agent run`), a subscriber printing alerts as SCADA would see them,
   and the simulator publishing a faulted run of the same pumps over MQTT at `--speed` x real time;
5. a summary that matches the alerts against the simulator's ground truth.

Without mosquitto the agent reads the faulted run from CSV files (replay source) and prints its alerts as
JSON lines on the console instead.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from edge_agent.simulator import (  # noqa: E402
    UNITS,
    FaultSchedule,
    MqttTarget,
    Pacer,
    Plant,
    publish_mqtt,
    read_ground_truth,
    write_csv,
    write_ground_truth,
)

ASSETS = ["pump-1", "pump-2", "pump-3"]
CHANNELS = [
    "speed",
    "flow",
    "suction_pressure",
    "discharge_pressure",
    "motor_current",
    "vibration_rms",
    "bearing_temp",
]
START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z: simulated time; the agent uses the payload timestamps
ALERT_FILTER = "demo-plant/pumps/line-1/+/anomaly/alert"


def step(message: str) -> None:
    bold, plain = ("\033[1m", "\033[0m") if sys.stdout.isatty() else ("", "")  # no escape codes in a log
    print(f"\n{bold}==> {message}{plain}", flush=True)


def run(cmd: list[str], **kwargs: object) -> None:
    print("   $ " + " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


# ---------------------------------------------------------------------------------------------------------
# configs


def trainer_config(data_dir: Path, epochs: int) -> str:
    paths = ", ".join(f'"{data_dir / (asset + ".csv")}"' for asset in ASSETS)
    channels = ", ".join(f'"{c}"' for c in CHANNELS)
    units = "\n".join(f'{c} = "{UNITS[c]}"' for c in CHANNELS)
    return f"""# Written by scripts/demo.py: a VAE for the simulator's pumps.
[data]
source = "csv"
val_fraction = 0.2
calibration_fraction = 0.2
split_seed = 0
split = "time"

[data.units]
{units}

[data.csv]
paths = [{paths}]
timestamp_column = "timestamp"
channels = [{channels}]
label_column = "label"

[windows]
length = 32
stride = 4
train_stride = 4
sample_period_s = 1.0

[model]
kind = "conv_vae"
latent_dim = 6
hidden = [32, 64]
kernel_size = 5
beta = 0.05
kl_warmup_epochs = 3

[training]
epochs = {epochs}
batch_size = 128
learning_rate = 0.003
weight_decay = 0.0001
patience = 4
grad_clip = 5.0
seed = 0
threads = 2

[calibration]
method = "pot"
target_far = 0.0005

[evaluation]
score = "reconstruction"
score_baseline = "none"
baseline_windows = 5
"""


def agent_config(workdir: Path, broker_port: int | None, replay_dir: Path | None, speed: float) -> str:
    lines = [
        "# Written by scripts/demo.py.",
        f'state_dir = "{workdir / "state"}"',
        'device_profile = "x86-64-ipc"',
        "status_interval_s = 2.0",
        "",
        "[gateway]",
        'site = "demo-plant"',
        'area = "pumps"',
        'line = "line-1"',
        'id = "demo-gw"',
        "",
        "[bundle]",
        f'path = "{workdir / "pumps.bundle"}"',
        f'trusted_keys = "{workdir / "trusted-keys"}"',
        "require_signature = true",
        "",
    ]
    fields = ", ".join(f'"{c}"' for c in CHANNELS)
    if broker_port is not None:
        lines += [
            "[sources.plant]",
            'type = "mqtt"',
            'host = "127.0.0.1"',
            f"port = {broker_port}",
            'payload = "json"',
            f"fields = [{fields}]",
            'timestamp_field = "ts"',
            "",
            "[sources.plant.topics]",
            *[f'"plant/{asset}/telemetry" = "{asset}"' for asset in ASSETS],
            "",
        ]
    else:
        assert replay_dir is not None
        for asset in ASSETS:
            lines += [
                f"[sources.{asset}]",
                'type = "replay"',
                f'path = "{replay_dir / (asset + ".csv")}"',
                f"fields = [{fields}]",
                'timestamp_field = "timestamp"',
                f"speed = {speed}",
                "rebase = false",
                "",
            ]
    for asset in ASSETS:
        lines += [f"[assets.{asset}]", 'model = "pump"']
        if broker_port is None:
            lines.append(f'source = "{asset}"')
        lines += ["staleness_s = 5.0", "", f"[assets.{asset}.channels]"]
        for channel in CHANNELS:
            field = f"plant.{asset}.{channel}" if broker_port is not None else channel
            lines.append(f'{channel} = "{field}"')
        lines.append("")
    if broker_port is not None:
        lines += [
            "[mqtt]",
            'host = "127.0.0.1"',
            f"port = {broker_port}",
            'client_id = "demo-gw"',
            "health_interval_s = 10",
            "",
        ]
    lines += [
        "[decisions]",
        "update_interval_s = 30",
        "",
        "[logging]",
        'level = "warning"',
        'format = "text"',
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------
# live part


class Broker:
    """A private mosquitto on a free loopback port (or None when mosquitto is not installed)."""

    def __init__(self, workdir: Path) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\n"
        )
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen(
            [mosquitto, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "mosquitto.log").open("wb"),
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("mosquitto did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


class AlertSubscriber:
    """What a SCADA subscriber sees: every alert, printed as it arrives."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.alerts: list[dict] = []
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="demo-scada")
        self.client.on_connect = lambda c, *_a: c.subscribe(ALERT_FILTER, qos=1)
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("subscriber did not subscribe")

    def _on_message(self, _client: object, _userdata: object, msg: object) -> None:
        alert = json.loads(msg.payload)  # type: ignore[attr-defined]
        with self.lock:
            self.alerts.append(alert)
        print_alert(alert, msg.topic)  # type: ignore[attr-defined]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def print_alert(alert: dict, topic: str = "") -> None:
    causes = ", ".join(f"{c['channel']} {c['share']:.0%}" for c in alert["root_cause"]["channels"][:3])
    flat = alert["root_cause"].get("flat")
    if flat:  # a stuck sensor: these channels did not change over the window
        causes = f"FLAT LINE on {', '.join(flat)}; {causes}"
    print(
        f"   ALERT {alert['state']:<6} {alert['asset']:<7} severity={alert['severity']:<8} "
        f"score={alert['score']:.3g} (threshold {alert['threshold']:.3g}) root cause: {causes}"
        + (f"   [{topic}]" if topic else ""),
        flush=True,
    )


# ---------------------------------------------------------------------------------------------------------
# summary


@dataclass
class FaultResult:
    asset: str
    kind: str
    channels: list[str]
    start_ts: float
    end_ts: float
    detected: bool = False
    delay_s: float | None = None
    top_channel: str | None = None

    @property
    def root_cause_right(self) -> bool | None:
        return None if self.top_channel is None else self.top_channel in self.channels


def window_end_ts(alert: dict) -> float:
    """Unix time of the end of the alert's window (the payload carries RFC 3339 UTC)."""
    return datetime.fromisoformat(alert["window"]["end"].replace("Z", "+00:00")).timestamp()


def summarise(truth: list[dict], alerts: list[dict], grace_s: float) -> dict:
    """Match opened episodes to injected faults (same asset, opened between fault start and end + grace)."""
    opens = [a for a in alerts if a["state"] == "open"]
    results = [
        FaultResult(t["asset"], t["kind"], list(t["channels"]), float(t["start_ts"]), float(t["end_ts"]))
        for t in truth
    ]
    matched: set[str] = set()
    for result in results:
        for alert in sorted(opens, key=window_end_ts):
            end_ts = window_end_ts(alert)
            if alert["asset"] == result.asset and result.start_ts <= end_ts <= result.end_ts + grace_s:
                result.detected = True
                result.delay_s = round(end_ts - result.start_ts, 1)
                # a flat-lined (stuck) channel is the cause when there is one; else the largest share
                flat = alert["root_cause"].get("flat") or []
                result.top_channel = flat[0] if flat else alert["root_cause"]["channels"][0]["channel"]
                matched.add(alert["episode_id"])
                break
    false_alerts = [
        a
        for a in opens
        if a["episode_id"] not in matched
        and not any(
            a["asset"] == r.asset and r.start_ts <= window_end_ts(a) <= r.end_ts + grace_s for r in results
        )
    ]
    closed = {a["episode_id"] for a in alerts if a["state"] == "close"}
    return {
        "faults_injected": len(results),
        "faults_detected": sum(r.detected for r in results),
        "false_alert_episodes": len(false_alerts),
        "root_cause_top1_right": sum(bool(r.root_cause_right) for r in results if r.detected),
        "alerts_received": len(alerts),
        "faults": [
            {
                "asset": r.asset,
                "kind": r.kind,
                "faulted_channels": r.channels,
                "detected": r.detected,
                "detection_delay_s": r.delay_s,
                "top_root_cause": r.top_channel,
                "root_cause_right": r.root_cause_right,
            }
            for r in results
        ],
        # episodes whose close had not come when the run ended (their fault, or its effect, still on)
        "episodes_open_at_end": [
            {"asset": a["asset"], "episode_id": a["episode_id"], "opened_window_end": a["window"]["end"]}
            for a in opens
            if a["episode_id"] not in closed
        ],
    }


def print_summary(summary: dict) -> None:
    step("Summary")
    print(f"   {'asset':<8}{'fault':<17}{'detected':<10}{'delay (s)':<11}{'top root cause':<22}right?")
    for f in summary["faults"]:
        delay = "-" if f["detection_delay_s"] is None else f"{f['detection_delay_s']:.0f}"
        right = {True: "yes", False: "no", None: "-"}[f["root_cause_right"]]
        print(
            f"   {f['asset']:<8}{f['kind']:<17}{'yes' if f['detected'] else 'no':<10}{delay:<11}"
            f"{f['top_root_cause'] or '-':<22}{right}"
        )
    print(
        f"\n   faults injected: {summary['faults_injected']}, detected: {summary['faults_detected']}, "
        f"false alert episodes: {summary['false_alert_episodes']}, "
        f"top root-cause channel right: {summary['root_cause_top1_right']}/{summary['faults_detected']}"
    )
    still_open = summary["episodes_open_at_end"]
    if still_open:
        print(f"   still open when the run ended (no close alert yet): "
              f"{', '.join(e['asset'] for e in still_open)}")


# ---------------------------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".demo")
    parser.add_argument("--train-hours", type=float, default=8.0, help="simulated hours of healthy data")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument(
        "--live-seconds", type=float, default=1200.0, help="simulated seconds of the live run"
    )
    parser.add_argument("--speed", type=float, default=20.0, help="live run speed-up over real time")
    parser.add_argument("--seed", type=int, default=7, help="seed of the live run's faults and noise")
    parser.add_argument(
        "--fault-kinds",
        default="bearing_wear,cavitation,blocked_filter,stuck_sensor,drifting_sensor",
        help="comma-separated fault kinds injected in the live run, one of each",
    )
    parser.add_argument("--no-broker", action="store_true", help="replay from files, alerts on the console")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    workdir: Path = args.workdir.resolve()
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    started = time.monotonic()
    edge_agent, edge_trainer = venv_bin("edge-agent"), venv_bin("edge-trainer")

    step(f"Simulating {args.train_hours:g} h of healthy operation of {', '.join(ASSETS)} (seed 1)")
    train_steps = int(args.train_hours * 3600)
    write_csv(Plant(ASSETS, seed=1, sample_period_s=1.0).samples(START_TS, train_steps), workdir / "healthy")
    print(f"   {train_steps} samples per pump -> {workdir / 'healthy'}")

    step("Training a Conv1D VAE on the healthy data (edge-trainer fit)")
    (workdir / "train.toml").write_text(trainer_config(workdir / "healthy", args.epochs))
    run([edge_trainer, "fit", "--config", str(workdir / "train.toml"), "--out", str(workdir / "run")])

    step("Exporting a signed ONNX bundle (edge-trainer keygen + export)")
    run([edge_trainer, "keygen", "--out", str(workdir / "keys")])
    trusted = workdir / "trusted-keys"
    trusted.mkdir()
    public_keys = sorted((workdir / "keys").glob("*.pub"))
    private_keys = sorted(p for p in (workdir / "keys").iterdir() if p not in public_keys)
    shutil.copy(public_keys[0], trusted / public_keys[0].name)
    run(
        [
            edge_trainer,
            "export",
            "--run",
            str(workdir / "run"),
            "--out",
            str(workdir / "pumps.bundle"),
            "--sign-key",
            str(private_keys[0]),
            "--name",
            "pumps",
            "--version",
            "1.0.0",
            "--precision",
            "auto",
            "--model-name",
            "pump",
        ]
    )

    use_broker = not args.no_broker and mosquitto_available()
    schedule = FaultSchedule.generate(
        ASSETS, duration_s=args.live_seconds, seed=args.seed, kinds=args.fault_kinds.split(",")
    )
    live_start = START_TS + 86_400.0  # the day after the training data
    truth_path = workdir / "ground-truth.jsonl"
    write_ground_truth(truth_path, schedule, origin_ts=live_start)
    plant = Plant(ASSETS, seed=args.seed, sample_period_s=1.0, faults=schedule)
    live_steps = int(args.live_seconds)
    replay_dir = None
    if not use_broker:
        replay_dir = workdir / "live"
        write_csv(plant.samples(live_start, live_steps), replay_dir)

    broker = Broker(workdir) if use_broker else None
    config_path = workdir / "agent.toml"
    config_path.write_text(agent_config(workdir, broker.port if broker else None, replay_dir, args.speed))

    step("Installing the bundle on the gateway (edge-agent check-config + bundle install)")
    run([edge_agent, "check-config", "--config", str(config_path)])
    run([edge_agent, "bundle", "install", str(workdir / "pumps.bundle"), "--config", str(config_path)])

    subscriber = AlertSubscriber(broker.port) if broker else None
    mode = "over MQTT" if broker else "from files (no mosquitto: alerts printed by the agent)"
    step(
        f"Running the agent against the live plant {mode}: {args.live_seconds:g} simulated s at "
        f"{args.speed:g}x ({args.live_seconds / args.speed:.0f} s), faults injected per {truth_path.name}"
    )
    for fault in read_ground_truth(truth_path):
        print(
            f"   fault: {fault['asset']} {fault['kind']} on {', '.join(fault['channels'])} "
            f"from +{fault['start_ts'] - live_start:.0f} s to +{fault['end_ts'] - live_start:.0f} s"
        )
    agent_log = (workdir / "agent.log").open("wb")
    agent = subprocess.Popen(
        [edge_agent, "run", "--config", str(config_path)],
        stdout=subprocess.PIPE if not broker else agent_log,
        stderr=agent_log,
    )
    console_alerts: list[dict] = []
    try:
        wait_for_ready(workdir / "state" / "status.json", agent)
        if broker:
            asyncio.run(
                publish_mqtt(
                    plant.ticks(live_start, live_steps),
                    MqttTarget("127.0.0.1", broker.port),
                    Pacer(1.0, speed=args.speed),
                )
            )
            time.sleep(2.0)  # let the last windows be scored and their alerts delivered
        else:
            console_alerts = read_console_alerts(agent, timeout=args.live_seconds / args.speed + 30)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
        if subscriber:
            subscriber.close()
        if broker:
            broker.stop()
    alerts = subscriber.alerts if subscriber else console_alerts

    summary = summarise(read_ground_truth(truth_path), alerts, grace_s=60.0)
    summary["demo_wall_s"] = round(time.monotonic() - started, 1)
    setup = os.environ.get("EDGE_DEMO_SETUP_S")  # set by scripts/demo.sh: packages and the virtualenv
    summary["setup_s"] = float(setup) if setup and setup.isdigit() else None
    summary["agent_exit_code"] = agent.returncode
    print_summary(summary)
    took = f"demo took {summary['demo_wall_s']:.0f} s"
    if summary["setup_s"] is not None:
        took += f" after {summary['setup_s']:.0f} s of set-up (virtualenv, packages)"
    print(f"\n   {took}; files in {workdir}")
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary, indent=2))
    return 0 if agent.returncode == 0 else 1


def wait_for_ready(status_path: Path, agent: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not status_path.exists():
        if agent.poll() is not None:
            raise RuntimeError(f"the agent exited with {agent.returncode}; see its log")
        if time.monotonic() > deadline:
            raise RuntimeError("the agent did not start within 60 s")
        time.sleep(0.1)


def read_console_alerts(agent: subprocess.Popen[bytes], timeout: float) -> list[dict]:
    """Console sink: one JSON alert per stdout line; stop when the replay has run its course."""
    assert agent.stdout is not None
    alerts: list[dict] = []
    deadline = time.monotonic() + timeout
    os.set_blocking(agent.stdout.fileno(), False)
    buffer = b""
    while time.monotonic() < deadline and agent.poll() is None:
        chunk = agent.stdout.read() or b""
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            if line.strip().startswith(b"{"):
                alert = json.loads(line)
                alerts.append(alert)
                print_alert(alert)
        if not chunk:
            time.sleep(0.1)
    return alerts


if __name__ == "__main__":
    sys.exit(main())
