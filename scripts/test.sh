#!/usr/bin/env bash
# The whole test suite from nothing: Debian packages the real-component tests need (mosquitto, socat,
# PortAudio/PulseAudio, systemd-analyze), the virtualenv with every extra, then ruff, mypy and pytest.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
cd "$REPO_ROOT"

ensure_apt_packages ca-certificates mosquitto mosquitto-clients socat libportaudio2 pulseaudio \
    pulseaudio-utils systemd
ensure_venv "dev,trainer,camera,audio"

echo "==> ruff"
ruff check .
echo "==> mypy"
mypy
echo "==> pytest"
python -m pytest "$@"
