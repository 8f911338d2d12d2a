"""Shared fixtures: a tiny real corpus (espeak-ng speech) and a tiny model trained on it once per run."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("STREAMST_TEST_CACHE", ROOT / ".pytest_cache" / "streamst"))


def _code_hash() -> str:
    """Retrain whenever the code that defines the model, features or training changes."""
    h = hashlib.sha1()
    for rel in ("streamst/model.py", "streamst/features.py", "streamst/training/step.py", "streamst/training/quick.py",
                "streamst/testing.py", "streamst/tokenizer.py", "streamst/checkpoint.py"):
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


@pytest.fixture(scope="session")
def tiny_corpus() -> list[tuple[Path, str]]:
    """(wav path, transcript) for 24 sentences x 2 espeak-ng voices, 16 kHz."""
    from streamst.testing import make_tiny_corpus

    return make_tiny_corpus(CACHE / "tiny-corpus")


@pytest.fixture(scope="session")
def tiny_model_path(tiny_corpus) -> Path:
    """A small ASR model trained on the tiny corpus with the project's own training step."""
    from streamst.testing import train_tiny_model

    path = CACHE / f"tiny-{_code_hash()}.pt"
    if not path.exists():
        train_tiny_model(tiny_corpus, path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_model_path):
    from streamst.checkpoint import load_model

    return load_model(str(tiny_model_path))
