"""`streamst stream FILE --url` through a server commits the same words as `streamst transcribe FILE`."""
from __future__ import annotations

import subprocess
import sys

from test_server import ServeProcess


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamst.cli", *args], capture_output=True, text=True, timeout=300)


def test_replay_through_server_equals_file_cli(tiny_model_path, tiny_corpus, tmp_path):
    wavs = [str(w) for w, _ in tiny_corpus[:3]] + [str(tiny_corpus[30][0])]
    policy = "waitk:k=2"
    local = cli("transcribe", *wavs, "--model", str(tiny_model_path), "--policy", policy, "--format", "text")
    assert local.returncode == 0, local.stderr
    local_lines = [line.split() for line in local.stdout.splitlines()]
    assert len(local_lines) == len(wavs) and all(local_lines)
    assert "LAAL" in local.stderr and "RTF" in local.stderr
    srv = ServeProcess(tmp_path, tiny_model_path, "--policy", policy)
    try:
        remote = cli("stream", *wavs, "--url", srv.url)
    finally:
        assert srv.terminate() == 0, srv.output()
    assert remote.returncode == 0, remote.stderr
    assert [line.split() for line in remote.stdout.splitlines()] == local_lines


def test_file_cli_reports_a_bad_file_and_goes_on(tiny_model_path, tiny_corpus, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wav")
    good, text = tiny_corpus[0]
    out = cli("transcribe", str(bad), str(good), "--model", str(tiny_model_path), "--policy", "offline")
    assert out.returncode == 1
    assert "bad.wav" in out.stderr and "cannot read audio" in out.stderr
    assert out.stdout.split() == text.split()


def test_bad_policy_spec_lists_the_valid_keys(tiny_model_path, tiny_corpus):
    out = cli("transcribe", str(tiny_corpus[0][0]), "--model", str(tiny_model_path), "--policy", "waitk:q=1")
    assert out.returncode == 2 and "valid keys" in out.stderr and "k=" in out.stderr
