"""`edge-agent simulate`: a plant of pumps streaming to MQTT, a serial port and/or CSV files.

Examples:

    # a day of healthy training data, one CSV per pump, as fast as possible
    edge-agent simulate --healthy --duration 86400 --csv data/healthy

    # live to a broker 10x faster than real time, with generated faults and their ground truth
    edge-agent simulate --mqtt 127.0.0.1:1883 --speed 10 --duration 1800 --ground-truth truth.jsonl

    # commissioning a serial input: pump-1 as CSV lines on a pty, in real time, until Ctrl-C
    edge-agent simulate --healthy --serial /dev/pts/5 --serial-asset pump-1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import re
import signal
import sys
import time
from collections.abc import Sequence
from datetime import timezone
from pathlib import Path
from typing import Any

from edge_agent.compat import parse_iso8601
from edge_agent.configtools import ConfigError
from edge_agent.simulator.faults import FAULT_KINDS, FaultSchedule, write_ground_truth
from edge_agent.simulator.outputs import (
    LINE_FORMATS,
    MQTT_PAYLOADS,
    CsvSink,
    MqttSink,
    MqttTarget,
    Pacer,
    SerialSink,
    Sink,
    run_sinks,
)
from edge_agent.simulator.plant import Plant

log = logging.getLogger(__name__)

# Files are reproducible byte for byte by default: their clock starts here unless --start says otherwise.
DEFAULT_FILE_START = "2026-01-01T00:00:00Z"
DEFAULT_FAULT_SPAN_S = 3600.0  # where generated faults go when a live run has no --duration
_ASSET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")  # safe in MQTT topics and file names


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edge_agent.simulator.cli ...`: the simulator alone, without the rest of the agent's CLI."""
    parser = argparse.ArgumentParser(prog="edge-agent")
    parser.add_argument("--log-level", default=None, help="logging level (e.g. INFO)")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["simulate", *(sys.argv[1:] if argv is None else argv)])
    if args.log_level:
        logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


def register(subparsers: Any) -> None:
    """Add `simulate` to the `edge-agent` command line."""
    parser = subparsers.add_parser(
        "simulate", help="run the built-in pump plant simulator",
        description=__doc__.split("\n\n", 1)[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    plant = parser.add_argument_group("plant")
    plant.add_argument("--assets", default="pump-1,pump-2,pump-3", help="comma-separated pump names")
    plant.add_argument("--seed", type=int, default=0, help="random seed (same seed, same output)")
    plant.add_argument("--sample-rate", type=float, default=1.0, metavar="HZ", help="samples per second")
    plant.add_argument("--duration", type=float, default=None, metavar="S",
                       help="simulated seconds (default: 3600 for files only, endless with a live output)")
    plant.add_argument("--speed", type=float, default=None,
                       help="times faster than real time; 0 = as fast as possible "
                            "(default: 1 with --mqtt/--serial, else 0)")
    plant.add_argument("--start", default=None,
                       help=f"timestamp of the first sample: 'now', ISO 8601 or Unix seconds "
                            f"(default: now for live outputs, {DEFAULT_FILE_START} for files only)")
    plant.add_argument("--noise-scale", type=float, default=1.0, help="multiplies every sensor's noise")
    faults = parser.add_argument_group("faults (default: one of each kind, generated from the seed)")
    choice = faults.add_mutually_exclusive_group()
    choice.add_argument("--healthy", action="store_true", help="no faults (training data)")
    choice.add_argument("--faults", type=Path, metavar="FILE", help="fault schedule (TOML or JSON)")
    choice.add_argument("--fault-count", type=int, default=None, metavar="N", help="generate N faults")
    faults.add_argument("--fault-kinds", default=",".join(FAULT_KINDS),
                        help="comma-separated kinds to generate from")
    faults.add_argument("--healthy-lead", type=float, default=None, metavar="S",
                        help="healthy seconds before the first generated fault (default: 20 %% of the run)")
    faults.add_argument("--ground-truth", type=Path, metavar="FILE",
                        help="write the injected faults here (JSON lines; CSV if FILE ends in .csv)")
    out = parser.add_argument_group("outputs (at least one)")
    out.add_argument("--csv", type=Path, metavar="DIR",
                     help="write DIR/<asset>.csv (timestamp,channels,label)")
    out.add_argument("--mqtt", metavar="HOST[:PORT]", help="publish to this broker")
    out.add_argument("--mqtt-topic", default=None,
                     help="topic template with {asset} (and {channel} for number payloads); default "
                          "plant/{asset}/telemetry or plant/{asset}/{channel}")
    out.add_argument("--mqtt-payload", choices=MQTT_PAYLOADS, default="json",
                     help="a JSON object per asset and sample, or one number per channel topic")
    out.add_argument("--mqtt-qos", type=int, choices=(0, 1, 2), default=0)
    out.add_argument("--mqtt-client-id", default="", help="MQTT client id (default: random)")
    out.add_argument("--serial", metavar="DEVICE",
                     help="write one asset's lines to this serial device ('-': stdout)")
    out.add_argument("--serial-asset", default=None, help="asset written to --serial (default: the first)")
    out.add_argument("--serial-format", choices=LINE_FORMATS, default="csv")
    out.add_argument("--baud", type=int, default=115200)
    parser.set_defaults(func=run_command)


def parse_start(text: str | None, live: bool) -> float:
    """`now`, ISO 8601 (naive = UTC) or Unix seconds -> Unix seconds."""
    if text is None:
        text = "now" if live else DEFAULT_FILE_START
    if text == "now":
        return round(time.time(), 3)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = parse_iso8601(text)
    except ValueError as exc:
        raise ValueError(f"--start {text!r} is not 'now', ISO 8601 or Unix seconds") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def parse_host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 1883
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--mqtt {text!r}: port must be a number from 1 to 65535")
    return host or "127.0.0.1", int(port)


def _assets(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    bad = [name for name in names if not _ASSET_NAME.match(name)]
    if not names or bad:
        raise ValueError(f"--assets {text!r}: names must be non-empty and use only letters, digits, _ . -"
                         + (f" (bad: {', '.join(bad)})" if bad else ""))
    return names


def build_schedule(args: argparse.Namespace, assets: list[str], duration: float | None) -> FaultSchedule:
    if args.healthy:
        return FaultSchedule()
    if args.faults is not None:
        return FaultSchedule.load(args.faults)
    kinds = [k.strip() for k in args.fault_kinds.split(",") if k.strip()]
    return FaultSchedule.generate(assets, duration or DEFAULT_FAULT_SPAN_S, args.seed, count=args.fault_count,
                                  kinds=kinds, healthy_lead_s=args.healthy_lead)


def run_command(args: argparse.Namespace) -> int:
    """Entry point of `edge-agent simulate`; returns the exit status."""
    try:
        return asyncio.run(_run(args))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"edge-agent simulate: error: {exc}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace) -> int:
    live = bool(args.mqtt or args.serial)
    if not (live or args.csv or args.ground_truth):
        raise ValueError("nothing to do: give --csv DIR, --mqtt HOST[:PORT], --serial DEVICE "
                         "or --ground-truth FILE")
    if args.sample_rate <= 0 or not math.isfinite(args.sample_rate):
        raise ValueError(f"--sample-rate must be a positive number, got {args.sample_rate}")
    if args.duration is not None and args.duration <= 0:
        raise ValueError(f"--duration must be positive, got {args.duration}")
    duration = args.duration if args.duration is not None or live else 3600.0
    period = 1.0 / args.sample_rate
    steps = None if duration is None else max(1, round(duration / period))
    assets = _assets(args.assets)
    schedule = build_schedule(args, assets, duration)
    plant = Plant(assets, seed=args.seed, sample_period_s=period, faults=schedule,
                  noise_scale=args.noise_scale)
    start = parse_start(args.start, live)
    if args.ground_truth:
        write_ground_truth(args.ground_truth, schedule, start)
    speed = (1.0 if live else 0.0) if args.speed is None else args.speed

    sinks: list[Sink] = []
    try:
        if args.csv:
            sinks.append(CsvSink(args.csv, assets))
        if args.serial:
            asset = args.serial_asset or assets[0]
            if asset not in assets:
                raise ValueError(f"--serial-asset {asset!r} is not simulated (assets: {', '.join(assets)})")
            sinks.append(SerialSink(args.serial, asset, fmt=args.serial_format, baudrate=args.baud))
        if args.mqtt:
            host, port = parse_host_port(args.mqtt)
            target = MqttTarget(host, port, topic_template=args.mqtt_topic, payload=args.mqtt_payload,
                                qos=args.mqtt_qos, client_id=args.mqtt_client_id)
            sinks.append(await asyncio.to_thread(MqttSink, target))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread / platform
                loop.add_signal_handler(signum, stop.set)
        log.info("simulating %s: %d faults, %s samples at %g Hz, speed %s", ", ".join(assets), len(schedule),
                 steps if steps is not None else "endless", args.sample_rate, speed or "max")
        emitted = await run_sinks(plant.ticks(start, steps), sinks, Pacer(period, speed), stop)
    finally:
        for sink in sinks:
            await asyncio.to_thread(sink.close)
    print(_summary(emitted, assets, schedule, args, sinks), file=sys.stderr)
    return 0


def _summary(steps: int, assets: list[str], schedule: FaultSchedule, args: argparse.Namespace,
             sinks: list[Sink]) -> str:
    parts = [f"simulated {steps} time steps x {len(assets)} assets, {len(schedule)} faults"]
    for sink in sinks:
        if isinstance(sink, CsvSink):
            parts.append(f"CSV in {sink.directory}")
        elif isinstance(sink, MqttSink):
            parts.append(f"{sink.published} MQTT messages ({sink.dropped} dropped while disconnected)")
        elif isinstance(sink, SerialSink):
            parts.append(f"{sink.lines} lines to {sink.port}")
    if args.ground_truth:
        parts.append(f"ground truth in {args.ground_truth}")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
