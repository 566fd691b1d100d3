"""Per-transaction cost of add_alerts (1 alert) and record_windows (64 windows) with the WAL at
synchronous=NORMAL vs FULL (fixed for every transaction), and as shipped (alerts FULL, windows NORMAL)."""
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edge_agent.storage import Store
from tests.integration.test_alert_writer import scored
from tests.integration.test_storage import event


def run(mode: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        store = Store.open(Path(d) / "agent.db")
        if mode != "shipped":
            orig = store._transaction
            store._transaction = lambda durable=False: orig(False)  # one level for every transaction
            store._conn.execute(f"PRAGMA synchronous={mode}")
        n = 400
        t = time.perf_counter()
        for _ in range(n):
            store.add_alerts([event()], lambda e: "t", lambda e: b"{}")
        a = (time.perf_counter() - t) / n * 1000
        batch = [scored(1.8e9 + i, 0.1) for i in range(64)]
        t = time.perf_counter()
        for _ in range(n):
            store.record_windows(batch)
        w = (time.perf_counter() - t) / n * 1000
        store.close()
        return a, w

results = {}
for mode in ("NORMAL", "FULL", "shipped"):
    runs = [run(mode) for _ in range(3)]
    results[mode] = {
        "add_alerts_ms_per_txn": round(statistics.median(r[0] for r in runs), 3),
        "record_windows_64_ms_per_txn": round(statistics.median(r[1] for r in runs), 3),
    }
summary = {"date": time.strftime("%Y-%m-%d"), "runs": 3, "transactions": 400, "sync": results}
print(json.dumps(summary, indent=2))
