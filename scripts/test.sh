#!/usr/bin/env bash
# One command: set up a fresh machine and run the test suite (unit + integration with real Spark,
# RayDP, Ray and models). Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$PY" -m pytest tests "$@"
