"""Committed words and their delays (emitted, start and end ms) are those pinned in tests/fixtures/pinned.json
(written by `python tests/pinned.py --write` before the decode loop, the prefix cache and the step engine were
unified) for every policy, lone and batched, torch and ONNX, on the tiny test model and the shipped models."""
from __future__ import annotations

import functools
import json

import pytest

import pinned


@functools.lru_cache(maxsize=None)
def expected() -> dict:
    return json.loads(pinned.OUT.read_text())


@functools.lru_cache(maxsize=2)
def model(name: str, backend: str, tmp: str):
    from pathlib import Path

    return pinned.load(name, backend, Path(tmp))


CASES = [(name, backend, policy, beam) for name, backend, policies, beam in pinned.CASES for policy in policies]


@pytest.mark.parametrize("name,backend,policy,beam", CASES, ids=[pinned.key(*c) for c in CASES])
def test_words_and_delays_are_the_pinned_ones(name, backend, policy, beam, tmp_path_factory):
    if backend == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    m = model(name, backend, str(tmp_path_factory.getbasetemp()))
    got = pinned.case(m, policy, beam)
    want = expected()[pinned.key(name, backend, policy, beam)]
    assert got["lone"] == want["lone"]
    if "batched" in want:
        assert got["batched"] == want["batched"]
        assert got["batched"] == got["lone"]  # batched streams write what they write alone
