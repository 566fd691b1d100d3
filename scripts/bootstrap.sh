# Shared set-up for scripts/test.sh and scripts/demo.sh (sourced, not run).
# Installs the Debian packages given in APT_PACKAGES when any is missing, then a virtualenv in .venv
# with the extras given in PIP_EXTRAS. Works as root or through sudo on Debian 12 / Ubuntu 22.04+.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EDGE_AGENT_VENV:-$REPO_ROOT/.venv}"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root (or sudo) to run: $*" >&2; return 1; fi
}

missing_packages() {
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || echo "$pkg"
    done
}

ensure_apt_packages() {
    local missing
    missing="$(missing_packages "$@")"
    if [ -n "$missing" ]; then
        echo "==> installing Debian packages: $(echo $missing)"
        as_root apt-get update -qq
        # shellcheck disable=SC2086
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
}

find_python() {
    local candidate
    for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
            echo "$candidate"; return 0
        fi
    done
    echo "Python >= 3.10 not found (apt-get install python3)" >&2
    return 1
}

ensure_venv() {
    local extras="$1" python
    if [ ! -x "$VENV/bin/python" ]; then
        python="$(find_python)"
        if ! "$python" -m venv "$VENV" 2>/dev/null; then
            ensure_apt_packages python3-venv
            rm -rf "$VENV"
            "$python" -m venv "$VENV"
        fi
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    echo "==> installing the project into $VENV ($extras)"
    "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT[$extras]"
    export PATH="$VENV/bin:$PATH"
}
