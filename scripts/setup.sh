#!/usr/bin/env bash
# Create .venv when missing and install streamst into it (editable) with the given extras, e.g. "test,whisper".
# torch 2.14.1 + torchaudio 2.11.0 are the pair measured to work together on this kind of machine (pyproject.toml
# caps both at these versions). STREAMST_TORCH=cpu installs the CPU-only torch 2.13.0 instead (about 1.3 GB of
# venv instead of 6): PyPI's torchaudio wheel links CUDA libraries that a CPU torch lacks, and streamst uses only
# torchaudio's pure-Python parts (resample, Kaldi fbank, mel filters), so its compiled libraries are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=${1:-}
PY=${PYTHON:-python3}
TORCH_KIND=${STREAMST_TORCH:-default}
case "$TORCH_KIND" in
  default) TORCH=2.14.1 ;;
  cpu) TORCH=2.13.0 ;;
  *) echo "STREAMST_TORCH must be cpu or unset, got '$TORCH_KIND'" >&2; exit 2 ;;
esac
TORCHAUDIO=2.11.0
STAMP=.venv/.streamst-installed-${EXTRAS//,/-}-$TORCH_KIND-$(sha1sum pyproject.toml | cut -c1-12)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
if [ ! -f "$STAMP" ]; then
  LOG=.venv/setup.log  # pip and setuptools notices go here; shown only when the install fails
  : > "$LOG"
  pip_install() { .venv/bin/python -m pip install -q "$@" >> "$LOG" 2>&1 || true; }
  echo "streamst: installing into .venv (torch $TORCH, torchaudio $TORCHAUDIO${EXTRAS:+, extras $EXTRAS}); log in $LOG" >&2
  pip_install --upgrade pip wheel
  pip_install "torch==$TORCH"
  pip_install "torchaudio==$TORCHAUDIO"
  if [ "$TORCH_KIND" = cpu ]; then
    rm -f "$(.venv/bin/python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("torchaudio").origin))')"/lib/*.so
  fi
  pip_install -e ".${EXTRAS:+[$EXTRAS]}"
  if .venv/bin/python -c "import streamst, torch, torchaudio.functional, torchaudio.compliance.kaldi" >> "$LOG" 2>&1; then
    touch "$STAMP"
  else
    tail -n 40 "$LOG" >&2
    echo "streamst: setup failed (the whole log: $LOG)" >&2
    exit 1
  fi
fi
