"""A tiny real corpus and model for tests and quick demos: espeak-ng speech of short sentences, and a small
model trained on it for a minute or two on the CPU with the project's own training step."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from streamst.model import ModelConfig

TINY_SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "the sun is warm today", "we like green apples",
    "my friend reads a book", "the bird sings at dawn", "please open the door", "it is cold outside",
    "the red car is fast", "she drinks hot tea", "he plays the old piano", "they walk to school",
    "the moon is bright tonight", "i see a small boat", "the children laugh loudly", "rain falls on the roof",
    "we eat bread and cheese", "the train leaves at noon", "a fish swims in the lake", "you write a long letter",
    "the flowers are blue", "our house has a garden", "the baby sleeps quietly", "ten people wait outside",
]
TINY_VOICES = ("en-us", "en-gb+m3")
TINY_CONFIG = dict(d_model=96, n_heads=4, enc_layers=3, dec_layers=1, sub_channels=16, conv_kernel=7,
                   left_frames=32, dropout=0.0)


def make_tiny_corpus(folder: str | Path) -> list[tuple[Path, str]]:
    """Speak every sentence in every voice into 16 kHz wavs; returns (wav, text) pairs, voice-major."""
    from streamst.data.tts import synthesize

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for v, voice in enumerate(TINY_VOICES):
        for i, text in enumerate(TINY_SENTENCES):
            path = folder / f"v{v}-{i:02d}.wav"
            if not path.exists():
                audio, sr = synthesize(text, voice)
                audio = AF.resample(torch.from_numpy(audio), sr, 16000).numpy()
                sf.write(path, audio, 16000, subtype="PCM_16")
            out.append((path, text))
    return out


def train_tiny_model(corpus: list[tuple[Path, str]], out: str | Path, steps: int = 500) -> Path:
    """An ASR model that fits the tiny corpus (about 2 minutes on 2 CPU cores)."""
    from streamst.training.quick import Utterance, train_small

    rng = np.random.default_rng(0)
    utts = []
    for p, t in corpus:
        audio = sf.read(p, dtype="float32")[0]
        utts.append(Utterance(audio, t, t))
        # the same utterance inside quiet noise, as a microphone delivers it
        pad = [(0.002 * rng.standard_normal(int(16000 * rng.uniform(0.1, 1.0)))).astype(np.float32) for _ in range(2)]
        utts.append(Utterance(np.concatenate([pad[0], audio, pad[1]]), t, t))
    return train_small(utts, out, task="asr", cfg=ModelConfig(**TINY_CONFIG), steps=steps, batch_size=8, lr=3e-3)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A mono wav as 1-D float32 samples and its rate (the tests slice it into pieces)."""
    from streamst.audio import read_audio

    audio, rate = read_audio(path)
    return audio[:, 0], rate
