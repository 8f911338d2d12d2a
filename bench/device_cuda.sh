#!/usr/bin/env bash
# The GPU figures of `streamst bench --device cuda` in one go, for a lent GPU machine with python3 + torch and no
# network: installs streamst without dependencies (everything the device bench imports is already there), then
# benches the shipped en-de model and a model of the issue's reference size (12-layer d=256 encoder, random init)
# in bf16 with CUDA graphs, each under its own time limit, and writes JSON and logs under $OUT.
#     OUT=/tmp/gpu bash bench/device_cuda.sh            # on a GPU
#     DEVICE=cpu QUICK=1 OUT=/tmp/cpu bash bench/device_cuda.sh   # the same flow on the CPU, tiny
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/streamst-device}
DEVICE=${DEVICE:-cuda}
LIMIT=${LIMIT:-200}
EXTRA=()
[ -n "${QUICK:-}" ] && EXTRA=(--quick --max-streams 16)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
if ! $PY -c "import streamst.policies" 2>/dev/null; then
  $PY -m pip install -q --no-deps --no-index --no-build-isolation --target /tmp/streamst-site . >"$OUT/install.log" 2>&1 \
    || { echo "install failed"; tail -20 "$OUT/install.log"; exit 1; }
  export PYTHONPATH=/tmp/streamst-site
fi
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; nproc; } | tee "$OUT/machine.txt"

bench() {  # name, args...
  local name=$1; shift
  echo "== $name: streamst bench --device $DEVICE $*"
  timeout "$LIMIT" $PY -m streamst.cli bench --device "$DEVICE" --json "${EXTRA[@]}" "$@" \
    >"$OUT/$name.json" 2> >(tee "$OUT/$name.log" >&2)
  echo "== $name exit $?"
}
bench en-de --model en-de
bench ref-12x256 --random-model enc_layers=12,d_model=256
if [ "$DEVICE" = cuda ]; then
  bench en-de-eager --model en-de --no-cuda-graphs --max-streams 65536
fi
