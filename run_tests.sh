#!/usr/bin/env bash
# Run the test suite (unit tests + every notebook executed at smoke size + the browser check of the notebooks
# in JupyterLab), setting up .venv first. The browser check drives Debian's chromium: when it is missing and
# this runs as root with apt-get (CI), it is installed here; otherwise that one test is skipped and says why
# (VISUALSEARCH_NO_BROWSER=1 skips the install).
set -euo pipefail
root=$(cd "$(dirname "$0")" && pwd)
"$root/scripts/setup_env.sh"
if ! command -v chromium >/dev/null 2>&1 && [ -z "${VISUALSEARCH_NO_BROWSER:-}" ] \
   && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing Debian's chromium for the browser check (once)"
  { apt-get install -y -q chromium || { apt-get update -q && apt-get install -y -q chromium; }; } >/dev/null 2>&1 \
    || echo "setup: could not install chromium; the browser check will be skipped"
fi
cd "$root"
exec "${VISUALSEARCH_VENV:-$root/.venv}/bin/python" -m pytest "$@"
