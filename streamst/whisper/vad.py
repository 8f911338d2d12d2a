"""Silero VAD (the ONNX model shipped in the `silero-vad` wheel) run with onnxruntime, state passed explicitly."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

WINDOW = 512  # samples per VAD decision at 16 kHz
CONTEXT = 64  # samples of the previous window the model sees in front of each window


def silero_onnx_path() -> Path:
    """The ONNX file inside the installed `silero-vad` wheel (ValueError if the wheel is absent)."""
    try:
        import silero_vad
    except ImportError:
        raise ValueError("the VAD needs the silero-vad wheel: pip install silero-vad") from None
    path = Path(silero_vad.__file__).parent / "data" / "silero_vad.onnx"
    if not path.exists():
        raise ValueError(f"silero-vad is installed but {path} is missing")
    return path


@dataclass(frozen=True)
class VadState:
    rnn: np.ndarray  # [2, 1, 128] recurrent state
    context: np.ndarray  # last CONTEXT samples
    pending: np.ndarray  # samples not yet filling a whole window


class SileroVAD:
    """Speech probability per 32 ms window; `detect` says whether a piece of audio holds speech."""

    def __init__(self, threshold: float = 0.5, keep_ms: float = 1000.0, path: str | Path | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(
            str(path or silero_onnx_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.threshold, self.keep_ms = threshold, keep_ms

    def init_state(self) -> VadState:
        return VadState(np.zeros((2, 1, 128), np.float32), np.zeros(CONTEXT, np.float32), np.zeros(0, np.float32))

    def probabilities(self, audio: torch.Tensor | np.ndarray, state: VadState) -> tuple[list[float], VadState]:
        """Speech probability of each whole 512-sample window of the audio (after what was pending)."""
        samples = np.concatenate([state.pending, np.asarray(audio, dtype=np.float32).reshape(-1)])
        rnn, context, probs = state.rnn, state.context, []
        sr = np.array(16000, dtype=np.int64)
        n_windows = samples.size // WINDOW
        for i in range(n_windows):
            window = samples[i * WINDOW: (i + 1) * WINDOW]
            x = np.concatenate([context, window])[None]
            out, rnn = self.session.run(None, {"input": x, "state": rnn, "sr": sr})
            probs.append(float(out.reshape(-1)[0]))
            context = window[-CONTEXT:]
        return probs, VadState(rnn, context, samples[n_windows * WINDOW:])

    def detect(self, audio: torch.Tensor | np.ndarray, state: VadState) -> tuple[bool, VadState]:
        probs, state = self.probabilities(audio, state)
        return any(p >= self.threshold for p in probs), state
