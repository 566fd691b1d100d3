#!/usr/bin/env bash
# The main job, from nothing: a virtualenv with the trainer, mosquitto when it can be installed, then the demo
# (simulate -> train -> export a signed bundle -> bundle install -> run the agent live -> summary).
# Extra arguments go to scripts/demo.py (e.g. `bash scripts/demo.sh --speed 12`).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$REPO_ROOT"

# mosquitto carries the live run; without it the demo replays files and prints alerts on the console.
ensure_apt_packages ca-certificates mosquitto || echo "==> mosquitto unavailable: console mode" >&2
ensure_venv "trainer"
export EDGE_DEMO_SETUP_S="$SECONDS"  # the set-up's seconds (bash counts from the start of this script)
exec python scripts/demo.py "$@"
