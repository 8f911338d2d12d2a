#!/usr/bin/env bash
# Fine-tune the three shipped models on one lent GPU inside a fixed budget, with no network and no apt there:
# the sentence pairs travel as TSVs (`streamst data text --out .gpu/text`, made where the apt packages are), the
# missing wheels as files (.gpu/whl: espeakng-loader, soundfile, cffi, pycparser); speech is synthesised there
# with the same seed as the shipped corpora (so tst-COMMON's sentences and voices stay held out), then the three
# runs share the GPU, each starting from its shipped model (`--init-model`) and stopping at `--time-limit`.
#     OUT=/tmp/ft bash scripts/finetune_gpu.sh                                  # on the GPU machine
#     SKIP_WHEELS=1 HOURS=0.02 MINUTES=0.2 OUT=/tmp/ft bash scripts/finetune_gpu.sh   # the same flow, tiny, on a CPU
# $OUT receives <name>.pt (fp16) and <name>.md for each model, and timestamped logs (synth.log, train.log) written as the runs go (so a
# call cut off by its limit still brings back where the time went). --time-limit counts from each run's start,
# feature preparation included; each run gets a third of the CPU threads.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/streamst-finetune}
WORK=${WORK:-/tmp/streamst-finetune-work}
HOURS=${HOURS:-15}
MINUTES=${MINUTES:-5}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1
THREADS=$(( $(nproc) / 3 > 0 ? $(nproc) / 3 : 1 ))
stamp() { while IFS= read -r line; do printf '%s %s%s\n' "$(date +%T)" "${1:+$1: }" "$line"; done; }
if [ -z "${SKIP_WHEELS:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --no-build-isolation --target /tmp/site .gpu/whl/*.whl . \
    >"$WORK/install.log" 2>&1 || { tail -20 "$WORK/install.log"; exit 1; }
  export PYTHONPATH=/tmp/site
fi
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; }
t0=$(date +%s)
$PY -m streamst.cli data synth --text .gpu/text --out "$WORK/corpus" --pairs en-de,en-es,en-en --hours "$HOURS" \
  --workers "$(nproc)" --seed 1 2>&1 | stamp >"$OUT/synth.log" || { tail -20 "$OUT/synth.log"; exit 1; }
echo "synth: $(( $(date +%s) - t0 )) s"; tail -3 "$OUT/synth.log"
for spec in en-asr:en-en:0.5 en-de:en-de:0.3 en-es:en-es:0.3; do
  IFS=: read -r name pair ctc <<<"$spec"
  OMP_NUM_THREADS=$THREADS $PY -m streamst.cli train --corpus "$WORK/corpus" --pair "$pair" --out "$WORK/runs/$name" --name "$name" \
    --init-model "streamst/assets/models/$name.pt" --time-limit "$MINUTES" --steps 1000000 --lr 1e-3 --warmup 300 \
    --ctc-weight "$ctc" --save-every 250 --keep-last 3 --average-last 3 --dev-every 1000 --dev-segments 100 \
    --no-progress 2>&1 | stamp "$name" >>"$OUT/train.log" &
done
wait
echo "train: $(( $(date +%s) - t0 )) s"
for name in en-asr en-de en-es; do
  grep "^[0-9:]* $name: " "$OUT/train.log" | tail -4
  if [ -f "$WORK/runs/$name/model.pt" ]; then
    $PY scripts/ship_model.py "$WORK/runs/$name/model.pt" "$name" --dest "$OUT"
  fi
done
