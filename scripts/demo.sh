#!/usr/bin/env bash
# Quick start, command 1: set up .venv and stream the bundled sample through the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ""
exec .venv/bin/streamst demo "$@"
