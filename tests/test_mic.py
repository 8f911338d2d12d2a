"""`streamst mic`, `stream` and `serve` as a new user meets them (issue #20): the caption line, URLs as `serve`
prints them, a machine without a microphone or without PortAudio, a bad port."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from streamst.demo_mic import CaptionLine
from streamst.server.client import websocket_url

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamst.cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def test_caption_line_shows_each_word_once_and_the_whole_text_at_the_end():
    out = io.StringIO()
    line = CaptionLine(out, width=30)
    shown = []
    # what the server sends: a partial, then words committed out of it, then the partial of what follows
    for msg in ({"type": "partial", "text": "the quick brown", "lag_ms": 0},
                {"type": "stable", "words": [{"text": "the"}, {"text": "quick"}], "lag_ms": 0},
                {"type": "partial", "text": "brown fox", "lag_ms": 2500},
                {"type": "stable", "words": [{"text": w} for w in "brown fox jumps over the lazy dog".split()]},
                {"type": "done", "lag_ms": 0}):
        line.update(msg)
        shown.append(line.render())
    assert "quick" not in shown[1].replace("the quick", "", 1)  # not again in a stale partial
    assert shown[2].rstrip().endswith("(lag 2.5 s)") and "[brown fox]" in shown[2]
    assert all(len(s) == 29 for s in shown)
    line.end()
    final = out.getvalue().rsplit("\r", 1)[1]
    assert final.split() == "the quick brown fox jumps over the lazy dog".split()  # all of it, wrapped, not the tail


@pytest.mark.parametrize("typed, url", [
    ("http://127.0.0.1:8765/", "ws://127.0.0.1:8765/"),
    ("https://host:8765/?token=t", "wss://host:8765/?token=t"),
    ("ws://h:1", "ws://h:1/"),
    ("127.0.0.1:8765", "ws://127.0.0.1:8765/"),
])
def test_server_urls_as_users_type_them(typed, url):
    assert websocket_url(typed) == url


def test_bad_urls_ports_and_a_missing_microphone_are_one_line_errors(tmp_path):
    for args, needle in ((["stream", "x.wav", "--url", "ftp://h/"], "not a server URL"),
                         (["mic", "--url", "gopher://h/"], "not a server URL"),
                         (["serve", "--port", "-5"], "--port must be within 0..65535"),
                         (["serve", "--port", "70000"], "--port must be within 0..65535")):
        proc = cli(*args, cwd=tmp_path)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_mic_without_portaudio_says_how_to_install_it(tmp_path):
    """PortAudio missing: sounddevice's import raises OSError('PortAudio library not found'), as it does on a bare
    system (stood in for by a module that raises exactly that; the real library is installed here)."""
    (tmp_path / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    for args in (["mic"], ["mic", "--list-devices"]):
        proc = cli(*args, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, cwd=tmp_path)
        assert proc.returncode == 2 and "libportaudio2" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "PortAudio" in cli("mic", "--help").stdout


def test_mic_with_no_input_device(tmp_path):
    import sounddevice as sd

    from streamst.demo_mic import input_devices

    if input_devices(sd):
        pytest.skip("this machine has an input device")
    proc = cli("mic", cwd=tmp_path)
    assert proc.returncode == 2 and "no input device" in proc.stderr and "--file" in proc.stderr, proc.stderr
    proc = cli("mic", "--list-devices", cwd=tmp_path)
    assert proc.returncode == 1 and "no input devices found" in proc.stderr, proc.stderr
