#!/usr/bin/env bash
# Shared setup for scripts/demo.sh and scripts/test.sh: Debian packages (only those asked
# for and missing), a virtual environment in .venv, and CallScribe installed into it.
# Usage: source scripts/bootstrap.sh [EXTRA] [DEBIAN-PACKAGE…]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRA="${1:-}"
shift || true

apt_install() {
    local SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "installing Debian packages: $*" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

missing=()
for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# PYTHON=python3.12 ./scripts/test.sh picks another interpreter for the virtual environment.
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "CallScribe needs Python 3.11 or newer")'
if [ ! -x "$ROOT/.venv/bin/python" ]; then
    # Stock Debian and Ubuntu split venv's pip bootstrap (ensurepip) into python3.X-venv.
    if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
        version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        apt_install "python$version-venv" || apt_install python3-venv
    fi
    rm -rf "$ROOT/.venv"  # what a venv without pip left behind
    "$PYTHON" -m venv "$ROOT/.venv"
fi
VENV_PY="$ROOT/.venv/bin/python"
# Reinstall only when pyproject.toml changed since the last install.
stamp="$ROOT/.venv/.callscribe-installed-${EXTRA:-base}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    "$VENV_PY" -m pip install -q --upgrade pip
    if [ -n "$EXTRA" ]; then
        "$VENV_PY" -m pip install -q -e "$ROOT[$EXTRA]"
    else
        "$VENV_PY" -m pip install -q -e "$ROOT"
    fi
    touch "$stamp"
fi
