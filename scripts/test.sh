#!/usr/bin/env bash
# Quick start, command 2: set up .venv (with the test extras), the system packages the tests use (as root),
# the reference-toolkit venv used as a test oracle, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES="espeak-ng sox libportaudio2 trans-de-en wordnet-base apertium apertium-eng-spa diatheke
  sword-text-web sword-text-sparv pocketsphinx-testdata chromium iso-codes"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
  fi
fi
bash scripts/setup.sh "test,whisper,conformance"
bash .ci/oracles.sh
exec .venv/bin/python -m pytest -q "$@"
