#!/usr/bin/env bash
# Set up everything hybrid needs on a fresh machine; safe to run again (each step checks first).
#   - Java 17 (Spark's JVM), with apt when missing and we are root
#   - .venv with hybrid and its pinned stack (pip; torch 2.13.0 CPU)
#   - the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)
# Sourced by scripts/demo.sh and scripts/test.sh; sets $PY to the venv's python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FASHION_MNIST_DIR="${HYBRID_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"

say() { printf '[setup] %s\n' "$*"; }

apt_install() {
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        say "missing: $* -- install it (e.g. 'sudo apt-get install $*') and run this again"
        exit 1
    fi
    if [[ ! -f /tmp/.hybrid-apt-updated ]]; then
        apt-get update -qq && touch /tmp/.hybrid-apt-updated
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# 1. Java 17 for Spark.
if ! command -v java >/dev/null; then
    say "installing OpenJDK 17 (Spark runs on the JVM)"
    apt_install openjdk-17-jre-headless
fi

# 2. Python 3.11 virtual environment with the pinned stack.
PYTHON_BIN="${PYTHON:-}"
if [[ -z "$PYTHON_BIN" ]]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            PYTHON_BIN="$candidate"; break
        fi
    done
fi
if [[ -z "$PYTHON_BIN" ]]; then
    say "Python 3.11 is required (raydp 1.6.5 and the pinned stack were measured on it); set PYTHON=/path/to/python3.11"
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    say "creating .venv with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
PY="$ROOT/.venv/bin/python"
stamp=".venv/.hybrid-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
    say "installing hybrid and its pinned stack into .venv (about 2 GB the first time)"
    "$PY" -m pip install -q -e ".[dev]"
    touch "$stamp"
fi

# 3. Fashion-MNIST (real data, installed offline from Debian's archive).
if [[ ! -f "$FASHION_MNIST_DIR/train-images-idx3-ubyte.gz" ]]; then
    if [[ "$FASHION_MNIST_DIR" == /usr/share/datasets/fashion-mnist ]]; then
        say "installing the Fashion-MNIST data (Debian package dataset-fashion-mnist)"
        apt_install dataset-fashion-mnist
    else
        say "no Fashion-MNIST IDX files in $FASHION_MNIST_DIR (HYBRID_FASHION_MNIST_DIR)"
        exit 1
    fi
fi
export PY
say "ready: $("$PY" --version), java $(java -version 2>&1 | head -1 | cut -d'"' -f2)"
