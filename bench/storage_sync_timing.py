"""Per-transaction cost of `Store.add_alerts` (1 alert) and `Store.record_windows` (64 windows) with the WAL
at synchronous=NORMAL and FULL for every transaction, and as shipped (alerts FULL, windows NORMAL), on a
temporary database in `--dir` (default: the system temp dir; point it at the gateway's state disk).

    python bench/storage_sync_timing.py [--dir D] [--runs 3] [--transactions 400] [--out F]

Prints JSON: per level, the median over runs of the mean milliseconds per transaction (docs/storage.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import emit
from edge_agent.decisions import new_id
from edge_agent.storage import Store
from edge_agent.types import AlertEvent, RootCauseEntry, ScoredWindow, Window

LEVELS = ("NORMAL", "FULL", "shipped")


def alert(ts: float) -> AlertEvent:
    return AlertEvent(new_id(ts), new_id(ts), "open", ts, ts, "pump-1", "pump", "b", "1.0", 2.0, 1.0,
                      "warning", ts - 10, ts, ts - 3, (RootCauseEntry("flow", 1.0),), {"reason": "open"})


def window(ts: float) -> ScoredWindow:
    raw = Window("pump-1", "pump", ts - 10, ts, np.zeros((2, 4), np.float32))
    return ScoredWindow(raw, 0.1, 0.1, 1.0, np.array([0.25, 0.75], np.float32),
                        np.array([0.5, -0.5], np.float32), np.zeros(4, np.float32), "b", "1.0")


def run(level: str, directory: str | None, n: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory(dir=directory) as d:
        store = Store.open(Path(d) / "agent.db")
        if level != "shipped":
            transaction = store._transaction
            # one level for every transaction: the durable flag is ignored, the pragma set once
            store._transaction = lambda durable=False, **kw: transaction(False, **kw)  # type: ignore[method-assign]
            store._conn.execute(f"PRAGMA synchronous={level}")
        start = time.perf_counter()
        for i in range(n):
            store.add_alerts([alert(1.8e9 + i)], lambda e: "t", lambda e: b"{}")
        alerts_ms = (time.perf_counter() - start) / n * 1000
        batch = [window(1.8e9 + i) for i in range(64)]
        start = time.perf_counter()
        for _ in range(n):
            store.record_windows(batch)
        windows_ms = (time.perf_counter() - start) / n * 1000
        store.close()
        return alerts_ms, windows_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=None, help="where the temporary database goes (default: temp dir)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=400)
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.transactions < 1:
        parser.error("--runs and --transactions must be at least 1")
    results = {}
    for level in LEVELS:
        runs = [run(level, args.dir, args.transactions) for _ in range(args.runs)]
        results[level] = {
            "add_alerts_ms_per_txn": round(statistics.median(r[0] for r in runs), 3),
            "record_windows_64_ms_per_txn": round(statistics.median(r[1] for r in runs), 3),
        }
    summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": args.runs,
               "transactions": args.transactions, "dir": args.dir or tempfile.gettempdir(), "sync": results}
    return emit(summary, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
