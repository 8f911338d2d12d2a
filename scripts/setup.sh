#!/usr/bin/env bash
# Create .venv when missing and install streamst into it (editable) with the given extras, e.g. "test,whisper".
# torch 2.14.1 + torchaudio 2.11.0 are the pair measured to work together on this kind of machine.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-}
PY=${PYTHON:-python3}
STAMP=.venv/.streamst-installed-${EXTRAS//,/-}-$(sha1sum pyproject.toml | cut -c1-12)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ ! -f "$STAMP" ]; then
  .venv/bin/python -m pip install -q --upgrade pip wheel 2>&1 | grep -v -i "warning" || true
  .venv/bin/python -m pip install -q "torch==2.14.1" 2>&1 | grep -v -i "warning" || true
  .venv/bin/python -m pip install -q "torchaudio==2.11.0" 2>&1 | grep -v -i "warning" || true
  .venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}" 2>&1 | grep -v -i "warning" || true
  .venv/bin/python -c "import streamst, torch, torchaudio" && touch "$STAMP"
fi
