#!/usr/bin/env bash
# Regenerate every table and figure: executes every notebook with papermill (see --help).
#   ./run_all.sh                                   default preset, synthetic data, CPU
#   ./run_all.sh --preset paper --data-root DIR --device cuda
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
"$root/scripts/setup_env.sh"
exec "${VISUALSEARCH_VENV:-$root/.venv}/bin/python" -m visualsearch.runner "$@"
