#!/usr/bin/env bash
# One command: set up a fresh machine and run the test suite (unit + integration with real Spark,
# RayDP, Ray and models, and the simulated multi-node cluster). `--full` first also runs the full tier
# (heavier end-to-end runs of what the default tier covers; README "Tests"). Other arguments go to
# pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
if [[ "${1:-}" == "--full" ]]; then
  export HYBRID_FULL_TESTS=1
  shift
fi
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ensure_browser
exec "$PY" -m pytest tests "$@"
