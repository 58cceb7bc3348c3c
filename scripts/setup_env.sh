#!/usr/bin/env bash
# Create the project's virtual environment (.venv) when missing, install the pinned requirements and the
# library (editable) into it, and register the Jupyter kernel "visualsearch" inside it. Idempotent and fast
# when nothing changed (a stamp records the hash of requirements.txt + pyproject.toml).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd -P)
venv="${VISUALSEARCH_VENV:-$root/.venv}"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3.11 python3 python; do
    if command -v "$c" >/dev/null 2>&1; then py=$c; break; fi
  done
fi
[ -n "$py" ] || { echo "error: no python found; install Python 3.11" >&2; exit 1; }
"$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)' || {
  echo "error: $py is $("$py" --version 2>&1); the companion needs Python 3.11" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating the virtual environment $venv"
  "$py" -m venv "$venv"
fi
stamp="$venv/.visualsearch-installed"
# the stamp covers this checkout's path too: a venv shared by two checkouts (VISUALSEARCH_VENV) is re-pointed
# at the one being run, instead of silently running the other's code
want=$( (cat "$root/requirements.txt" "$root/pyproject.toml" "$0"; echo "$root") | sha256sum | cut -c1-16)
installed_at=$("$venv/bin/python" -c 'import visualsearch, pathlib; print(pathlib.Path(visualsearch.__file__).resolve().parents[2])' 2>/dev/null || true)
[ "$installed_at" = "$root" ] || rm -f "$venv/.visualsearch-installed"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing pinned requirements into $venv (a few minutes the first time)"
  "$venv/bin/python" -m pip install -q -r "$root/requirements.txt" 2>&1 | grep -v -i "warning: location" || true
  "$venv/bin/python" -m pip install -q --no-deps -e "$root" 2>&1 | grep -v -i "warning: location" || true
  "$venv/bin/python" -c "import torch, torchvision, papermill, visualsearch" || {
    echo "error: the installation in $venv is incomplete (see the pip messages above)" >&2; exit 1; }
  "$venv/bin/python" -m ipykernel install --sys-prefix --name visualsearch --display-name "visualsearch (Python 3.11)" >/dev/null
  # the kernel is IPython's with its version reported as 3.11, so notebooks open unmodified on any 3.11.x
  # (lib/visualsearch/kernel.py)
  "$venv/bin/python" - "$venv/share/jupyter/kernels/visualsearch/kernel.json" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1]))
spec["argv"] = [a if a != "ipykernel_launcher" else "visualsearch.kernel" for a in spec["argv"]]
json.dump(spec, open(sys.argv[1], "w"), indent=1)
PY
  # every notebook saved under notebooks/ from this environment's Jupyter is stored without outputs and with
  # the project's kernelspec (lib/visualsearch/notebook_files.py), autosave included
  printf '{"ContentsManager": {"pre_save_hook": "visualsearch.notebook_files.pre_save_hook"}}\n' \
    > "$venv/etc/jupyter/jupyter_server_config.json"
  echo "$want" > "$stamp"
fi
