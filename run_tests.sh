#!/usr/bin/env bash
# Run the test suite (unit tests + every notebook executed at smoke size), setting up .venv first.
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
"$root/scripts/setup_env.sh"
cd "$root"
exec "${VISUALSEARCH_VENV:-$root/.venv}/bin/python" -m pytest "$@"
