#!/usr/bin/env bash
# One command: set up a fresh machine and run the main job on the embedded default
# (a local Ray started by hybrid, Spark on it through RayDP): `hybrid run`, the whole chain. Extra arguments go to it,
# e.g. scripts/demo.sh --set tune.num_samples=4
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec "$ROOT/.venv/bin/hybrid" run configs/fashion_mnist.yaml "$@"
