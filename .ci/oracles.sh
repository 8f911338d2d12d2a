#!/usr/bin/env bash
# Create .venv-oracles: the reference toolkits (SimulEval 1.1.4, OmniSTEval 0.1.10, simulstream 1.0.0) used only
# by tests/test_oracles.py as differential-test oracles. The project itself never imports them. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-oracles
PY=${PYTHON:-python3}
STAMP="$VENV/.oracles-ok-v1"
if [ -f "$STAMP" ]; then
  echo "oracles: $VENV already set up"; exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "simuleval==1.1.4" "omnisteval==0.1.10"
# simulstream's metrics need no torch: install it without its dependencies, plus what its scorers import.
"$VENV/bin/python" -m pip install -q --no-deps "simulstream==1.0.0"
"$VENV/bin/python" -m pip install -q mweralign pyyaml websockets pycountry
"$VENV/bin/python" - <<'PY'
import simuleval, omnisteval, simulstream, mweralign  # noqa: F401
from simuleval.evaluator.scorers.latency_scorer import ALScorer  # noqa: F401
from simulstream.metrics.scorers.latency.stream_laal import StreamLaal  # noqa: F401
print("oracles: imports ok")
PY
touch "$STAMP"
