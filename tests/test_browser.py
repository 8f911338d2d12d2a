"""The browser page in headless Chromium with a fake microphone fed from a wav file.

Chromium is driven over the DevTools protocol with the `websockets` client the project already depends on
(no Selenium or Playwright needed); Debian's `chromium` package provides the browser.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import connect

from test_server import ServeProcess, offline_words, tiny_model, tiny_wavs

PAD_BEFORE_S = 1.0
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")


class DevTools:
    """Just enough of the Chrome DevTools protocol: evaluate JavaScript in the page."""

    def __init__(self, ws):
        self.ws, self.ids = ws, itertools.count(1)

    async def evaluate(self, expression: str):
        msg_id = next(self.ids)
        await self.ws.send(json.dumps({"id": msg_id, "method": "Runtime.evaluate",
                                       "params": {"expression": expression, "returnByValue": True,
                                                  "awaitPromise": True}}))
        while True:
            reply = json.loads(await self.ws.recv())
            if reply.get("id") == msg_id:
                result = reply["result"]
                if "exceptionDetails" in result:
                    raise RuntimeError(result["exceptionDetails"])
                return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.25)
        raise TimeoutError(f"page never satisfied {expression}")


def start_chromium(url: str, wav: Path, profile: Path) -> tuple[subprocess.Popen, int]:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--remote-debugging-port=0", "--autoplay-policy=no-user-gesture-required",
           "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
           f"--use-file-for-fake-audio-capture={wav}%noloop", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("chromium did not start")
        time.sleep(0.1)
    return proc, int(port_file.read_text().split()[0])


def test_page_shows_the_words_from_a_fake_microphone(request, tmp_path):
    model = tiny_model(request, tmp_path)
    wav = tiny_wavs(request, tmp_path, n=1)[0]
    # the fake microphone: the utterance inside quiet noise, as a real microphone would deliver it
    speech, rate = sf.read(str(wav), dtype="float32")
    rng = np.random.default_rng(0)
    lead, tail = (0.002 * rng.standard_normal(int(rate * s)).astype(np.float32) for s in (PAD_BEFORE_S, 0.5))
    wav = tmp_path / "mic.wav"
    sf.write(str(wav), np.concatenate([lead, speech, tail]), rate, subtype="PCM_16")
    duration = sf.info(str(wav)).duration
    # what the model itself writes for this audio: the page must show those words (what the tiny model makes of
    # the noise around the sentence differs between CPUs, since its training does)
    expected = offline_words(model, wav, "offline")
    assert expected, "the tiny model writes nothing for its own training sentence"
    # offline: the tiny model, trained on 24 sentences, invents a memorised sentence from the leading noise, and a
    # streaming policy would commit it; the words that reach the page are what this test is about
    srv = ServeProcess(tmp_path, model, "--policy", "offline")
    profile = tmp_path / "profile"
    profile.mkdir()
    chrome, port = start_chromium(f"http://127.0.0.1:{srv.port}/", wav, profile)
    try:
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        target = next(p for p in pages if p["type"] == "page")

        async def drive():
            async with connect(target["webSocketDebuggerUrl"], max_size=1 << 24) as ws:
                page = DevTools(ws)
                await page.wait_for("document.readyState === 'complete' && !!window.streamst", 30)
                await page.evaluate("document.getElementById('start').click()")
                await page.wait_for("document.getElementById('status').textContent.startsWith('streaming')", 30)
                await asyncio.sleep(duration + 1.0)  # the fake microphone plays the file once, in real time
                await page.evaluate("document.getElementById('stop').click()")
                await page.wait_for("!!window.streamst.done", 60)
                return await page.evaluate("""({
                    stable: document.getElementById('stable').textContent,
                    partial: document.getElementById('partial').textContent,
                    words: window.streamst.words.map(w => w.text),
                    done: window.streamst.done, errors: window.streamst.errors,
                    srt: window.streamst.toSrt(), vtt: window.streamst.toVtt()})""")

        shown = asyncio.run(asyncio.wait_for(drive(), 180))
    finally:
        chrome.kill()
        chrome.wait()
        srv.terminate()
    assert shown["errors"] == []
    assert shown["done"]["reason"] == "eos" and shown["done"]["words"] == len(shown["words"])
    assert shown["done"]["stats"]["audio_s"] >= 0.8 * duration  # the whole file went through the page
    assert shown["stable"] == " ".join(shown["words"]) and shown["partial"] == ""
    assert shown["vtt"].startswith("WEBVTT")
    # the browser resamples the fake microphone, so the words may differ a little from the file's
    got = {w.lower().strip(".,?!") for w in shown["words"]}
    hits = sum(w.lower().strip(".,?!") in got for w in expected)
    assert hits >= 0.5 * len(expected), (shown["stable"], expected)
    assert shown["srt"].startswith("1\n00:")
