"""`streamst bench --json --quick` on the tiny model: one JSON object with every promised key."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("onnx")

from streamst.cli import main  # noqa: E402

KEYS = ["rtf", "chunk_ms_p95_10s", "chunk_ms_p95_600s", "recompute_over_cached_60s", "onnx_over_torch_speedup",
        "max_realtime_streams", "peak_rss_mb"]


def test_bench_json_has_every_figure(tiny_model_path, capsys):
    assert main(["bench", "--json", "--quick", "--model", str(tiny_model_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # progress goes to stderr, stdout is one JSON object
    res = json.loads(out[0])
    for key in KEYS:
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    assert res["max_realtime_streams"] >= 1
    assert set(res["encoder_ms"]) == {f"{b}_{p}s" for b in ("torch", "onnx") for p in (10, 60, 600)}
    assert res["scheduler_p95_ms"]["1"] < 300


def test_bench_rejects_a_missing_model(tmp_path, capsys):
    assert main(["bench", "--quick", "--model", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err
