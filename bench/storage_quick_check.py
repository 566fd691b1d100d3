"""What the start-up `PRAGMA quick_check` of the state database costs (docs/storage.md, "Damaged database").

Builds a ring buffer of `--windows` scored windows (`--assets` assets, 8 channels, 8 latent values, written
through `Store.record_windows` in batches of 64 as the agent writes them) in `--dir`, closes it, then times
the agent's own check (`edge_agent.storage.connection._check`) with the file in the page cache (`--warm`
runs) and, when this process may drop the page cache (root, `/proc/sys/vm/drop_caches`), right after
dropping it (`--cold` runs); `PRAGMA integrity_check` (every index entry too) once, warm, for comparison.

    .venv/bin/python bench/storage_quick_check.py [--windows 200000] [--dir D] [--out F]

Prints JSON.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import emit
from edge_agent.storage import RetentionConfig, Store
from edge_agent.storage.connection import _check
from edge_agent.types import ScoredWindow, Window

CHANNELS, LATENT, LENGTH = 8, 8, 4
BATCH = 64
DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def build(path: Path, windows: int, assets: int) -> float:
    """Write `windows` scored windows; returns the seconds it took."""
    store = Store.open(path, RetentionConfig(max_rows=windows + 1, max_age_s=3650 * 86400.0))
    rng = np.random.default_rng(0)
    errors = rng.random((BATCH, CHANNELS)).astype(np.float32)
    latents = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
    data = np.zeros((CHANNELS, LENGTH), np.float32)
    start, ts = time.perf_counter(), time.time() - windows * 0.02  # ending now: nothing pruned by age
    for first in range(0, windows, BATCH):
        batch = []
        for i in range(min(BATCH, windows - first)):
            ts += 0.02
            window = Window(f"asset-{(first + i) % assets}", "pump", ts - 10, ts, data)
            score = float(errors[i, 0])
            batch.append(ScoredWindow(window, score, score, 1.0, errors[i], latents[i],
                                      np.zeros(LENGTH, np.float32), "bench", "1.0"))
        store.record_windows(batch)
    store.close()
    return time.perf_counter() - start


def timed(action: Any) -> float:
    start = time.perf_counter()
    action()
    return round((time.perf_counter() - start) * 1000.0, 1)


def drop_page_cache() -> bool:
    try:
        os.sync()
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def integrity_check(path: Path) -> None:
    with sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True) as conn:
        assert [row[0] for row in conn.execute("PRAGMA integrity_check")] == ["ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200_000)
    parser.add_argument("--assets", type=int, default=50)
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--cold", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=None, help="where to build the database (default: a "
                        "temporary directory, removed afterwards)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="quick-check-") as tmp:
        path = Path(tmp) / "state.db"
        build_s = build(path, args.windows, args.assets)
        _check(path)  # read once: the warm runs start with the file in the page cache
        warm = [timed(lambda: _check(path)) for _ in range(args.warm)]
        integrity = timed(lambda: integrity_check(path))
        cold: list[float] = []
        for _ in range(args.cold):
            if not drop_page_cache():
                break
            cold.append(timed(lambda: _check(path)))
        result = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
            "windows": args.windows, "assets": args.assets,
            "database_mb": round(path.stat().st_size / 1e6, 1),
            "build_s": round(build_s, 1), "quick_check_warm_ms": warm, "integrity_check_warm_ms": integrity,
            "quick_check_cold_ms": cold,
            "cold_note": None if cold or not args.cold else "page cache not dropped (needs root and "
                                                            f"a writable {DROP_CACHES})",
        }
    return emit(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
