#!/usr/bin/env bash
# Installs everything the test suite needs into .venv (a fresh machine needs nothing else) and
# runs it. Usage: bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[dev]'
bash scripts/install_tools.sh   # MinIO server into .tools/bin (pinned go install; no-op when present)
.venv/bin/python scripts/gen_protos.py --check
.venv/bin/python scripts/gen_api_docs.py --check   # docs/api.md generated from the same protos
exec .venv/bin/python -m pytest -q "$@"
