"""Counters persisted across an in-process pipeline restart and a bundle swap do not undercount."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from edge_agent.agentstate import AgentState
from edge_agent.types import Reading
from edge_agent.windows import AssetWindowSpec, Windower


def pipeline(received: int, windower: Windower | None = None, nonfinite: int = 0) -> Any:
    source = SimpleNamespace(stats=SimpleNamespace(invalid=0, dropped=0, received=received))
    return SimpleNamespace(windower=windower, sources=[source],
                           engine=SimpleNamespace(dropped_nonfinite=nonfinite))


def persist(state: AgentState, sup: Any, db: dict[str, int]) -> None:
    for key, delta in state.take_counter_deltas(sup).items():
        db[key] = db.get(key, 0) + delta


def test_counters_keep_growing_after_a_pipeline_restart() -> None:
    state, db = AgentState(), {}
    first = pipeline(received=100, nonfinite=2)
    state.counters["windows_scored"] = 40
    persist(state, first, db)
    state.engine_retired(first.engine)
    state.sources_retired(first.sources)
    second = pipeline(received=30)  # the rebuilt source counts from zero
    state.counters["windows_scored"] = 50
    # status.json's totals (what `edge-agent status` shows) do not dip either
    assert state.totals(second)["readings_received"] == 130
    persist(state, second, db)
    assert db["readings_received"] == 130
    assert db["windows_scored"] == 50
    assert db["windows_nonfinite"] == 2


def test_stale_and_out_of_range_counts_survive_a_new_windower() -> None:
    spec = AssetWindowSpec(asset="p", model="m", inputs=(("s", "a"),), window_length=2, stride=1,
                           sample_period_s=1.0, staleness_s=1.5, max_jump_s=100.0)
    old = Windower([spec])
    for ts in (0.0, 1.0, 1e9, 5.0, 6.0):  # one far-off reading, one gap with stale windows
        old.push(Reading("s", ts, {"a": 1.0}))
    state, db = AgentState(), {}
    sup = pipeline(received=5, windower=old)
    persist(state, sup, db)
    before = (db["windows_stale"], db["readings_out_of_range"])
    assert before[0] > 0
    assert before[1] == 1
    state.windower_retired(old)
    sup.windower = Windower([spec])  # a swap to other window shapes builds a new one
    persist(state, sup, db)
    assert (db["windows_stale"], db["readings_out_of_range"]) == before
    assert state.totals(sup)["windows_stale"] == before[0]


def test_storage_status_shows_the_newest_fault_of_store_and_recorder() -> None:
    store = SimpleNamespace(in_memory=False, recovered_from=None, prune_failures=1,
                            last_fault="disk I/O error", last_fault_at=200.0)
    recorder = SimpleNamespace(failed_windows=64, last_fault="database or disk is full", last_fault_at=100.0)
    alerts = SimpleNamespace(unstored=[object()], sent_unstored=1)
    sup = SimpleNamespace(store=store, recorder=recorder, alerts=alerts)
    assert AgentState().storage(sup) == {
        "in_memory": False, "recovered_from": None, "windows_failed": 64, "prune_failures": 1,
        "alerts_in_memory": 1, "alerts_sent_unstored": 1, "last_fault": "disk I/O error"}
    recorder.last_fault_at = 300.0
    assert AgentState().storage(sup)["last_fault"] == "database or disk is full"
