"""The shipped default model through the command line: `streamst models` and `streamst demo` (Quick start 1)."""
from __future__ import annotations

import json
import re
import subprocess
import sys


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamst.cli", *args], capture_output=True, text=True, timeout=300)


def test_models_lists_the_three_shipped_defaults():
    out = cli("models", "--json")
    assert out.returncode == 0, out.stderr
    models = {m["name"]: m for m in json.loads(out.stdout)["models"]}
    for name, task, languages in [("en-asr", "asr", "en"), ("en-de", "st", "en-de"), ("en-es", "st", "en-es")]:
        assert models[name]["task"] == task and models[name]["languages"] == languages, models[name]
        assert models[name]["size_mb"] <= 40


def test_demo_streams_the_bundled_sample_and_summarises():
    out = cli("demo", "--policy", "waitk:k=2")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    words = [line for line in lines[:-1] if re.fullmatch(r"\S+  \[\d+ ms\]", line)]
    assert words and len(words) == len(lines) - 1
    delays = [int(re.search(r"\[(\d+) ms\]", w).group(1)) for w in words]
    assert delays == sorted(delays) and delays[0] < delays[-1] + 1
    assert re.match(r"\d+ words \| AL -?\d+ ms \| LAAL -?\d+ ms \| RTF \d+\.\d+", lines[-1]), lines[-1]
    assert "reference:" in out.stderr


def test_unknown_model_and_bad_file_give_clear_errors(tmp_path):
    out = cli("translate", "--model", "no-such-model", str(tmp_path / "x.wav"))
    assert out.returncode == 2 and "unknown model 'no-such-model'" in out.stderr and "en-de" in out.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    out = cli("translate", "--model", str(junk), str(tmp_path / "x.wav"))
    assert out.returncode == 2 and "not a streamst checkpoint" in out.stderr and len(out.stderr) < 300
