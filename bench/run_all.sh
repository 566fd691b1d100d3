#!/usr/bin/env bash
# Reruns every benchmark behind docs/benchmarks.md and leaves its JSON in bench/results/ (about 20 minutes on
# 2 cores). Needs the project's virtualenv (bash scripts/test.sh or scripts/demo.sh makes it) and the real
# datasets in ../shared/data (or DATA=/path/to/data).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
DATA="${DATA:-../shared/data}"
OUT=bench/results
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$OUT"

stamp() { echo "==> $* ($(date -u +%H:%M:%S))" >&2; }

stamp "C-MAPSS FD001"
$PY -m trainer.cli benchmark cmapss --data-dir "$DATA/cmapss" --subset FD001 --out "$WORK/fd001" > "$OUT/cmapss_fd001.json"
stamp "C-MAPSS FD002"
$PY -m trainer.cli benchmark cmapss --data-dir "$DATA/cmapss" --subset FD002 --out "$WORK/fd002" > "$OUT/cmapss_fd002.json"
stamp "SKAB"
$PY -m trainer.cli benchmark skab --data-dir "$DATA/skab" --out "$WORK/skab" --export-runs "$WORK/skab_runs" \
    > "$OUT/skab.json"
stamp "flat-line check on the C-MAPSS and SKAB test windows"
$PY bench/flatline_check.py --run "$WORK/fd001/run" "$WORK/fd002/run" "$WORK"/skab_runs/* \
    --out "$OUT/flatline_check.json" > /dev/null
stamp "SKAB score kinds (development files and anomaly-free run)"
$PY bench/skab_score_kinds.py --data-dir "$DATA/skab" --out "$OUT/skab_score_kinds.json" > /dev/null
stamp "SKAB error shares by channel (development files and anomaly-free run)"
$PY bench/skab_error_shares.py --data-dir "$DATA/skab" --out "$OUT/skab_error_shares.json" > /dev/null
stamp "SKAB row rules and run length (development files and anomaly-free run)"
$PY bench/skab_row_rules.py --data-dir "$DATA/skab" --out "$OUT/skab_row_rules.json" > /dev/null
stamp "export fp32 vs int8 (FD001 run)"
$PY bench/export_bench.py --run "$WORK/fd001/run" > "$OUT/export_fd001.json"
stamp "agent throughput, latency, CPU and memory"
$PY bench/agent_bench.py --out "$OUT/agent_bench.json" > /dev/null
stamp "agent latency with the state directory in RAM (tmpfs: no disk)"
TMPDIR=/dev/shm $PY bench/agent_bench.py --only latency --phase spread --out "$OUT/agent_bench_tmpfs.json" > /dev/null
stamp "agent latency, traced (where an alert's time goes)"
$PY bench/agent_bench.py --only latency --phase spread --duration 60 --trace \
    --out "$OUT/agent_trace_spread.json" > /dev/null
stamp "inference: a batch split over parallel session runs"
$PY bench/inference_bench.py --out "$OUT/inference_bench.json" > /dev/null
stamp "SQLite cost per transaction by synchronous level"
$PY bench/storage_sync_timing.py --out "$OUT/storage_sync.json" > /dev/null
stamp "start-up quick_check of a 200,000-window database (cold runs only as root)"
$PY bench/storage_quick_check.py --out "$OUT/storage_quick_check.json" > /dev/null
stamp "decision engine and status file timings"
$PY bench/micro_timings.py --out "$OUT/micro_timings.json" > /dev/null
stamp "demo (simulator faults, detection, root cause)"
$PY scripts/demo.py --workdir "$WORK/demo" --summary-json "$OUT/demo.json" > "$WORK/demo.log"
stamp "done: $OUT (work files in $WORK)"
