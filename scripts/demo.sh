#!/usr/bin/env bash
# One command: set up a fresh machine and run the main job on the embedded default
# (a local Ray started by hybrid, Spark on it through RayDP): `hybrid run`, the whole chain.
# A first argument ending in .yaml picks another config (configs/sentiment.yaml: the BERT chain,
# configs/qa_fixture.yaml: extractive QA); the other arguments go to `hybrid run`, e.g.
#   scripts/demo.sh --set tune.num_samples=4
#   scripts/demo.sh configs/sentiment.yaml
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
config=configs/fashion_mnist.yaml
if [[ $# -gt 0 && "$1" == *.yaml ]]; then
    config="$1"; shift
fi
exec "$ROOT/.venv/bin/hybrid" run "$config" "$@"
