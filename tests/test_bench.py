"""`streamst bench` on the tiny model: the JSON figures, int8 agreement, and the device scheduler (CPU only here)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")

from streamst.batching.device import BatchedFbank, DeviceScheduler, audio_bank  # noqa: E402
from streamst.batching.realtime import measure  # noqa: E402
from streamst.cli import main  # noqa: E402
from streamst.decoding import decode  # noqa: E402
from streamst.features import fbank  # noqa: E402
from streamst.policies import parse_policy  # noqa: E402
from streamst.testing import read_wav  # noqa: E402

KEYS = ["rtf", "chunk_ms_p95_10s", "chunk_ms_p95_600s", "recompute_over_cached_60s", "onnx_over_torch_speedup",
        "max_realtime_streams", "peak_rss_mb", "int8_rtf", "int8_over_fp32_speedup"]


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
    assert 0.0 <= res["int8_word_agreement"] <= 1.0 and 0.0 <= res["int8_ctc_agreement"] <= 1.0
    assert res["onnx_word_agreement"] == 1.0  # fp32 onnx commits exactly torch's words
    q = res["int8_quality"]
    assert q["data"].endswith("sample-en.wav") and q["utterances"] == 1
    assert {"torch", "onnx", "int8"} <= set(q) and "wer" in q["int8"]  # the tiny model is an ASR model


def test_stream_count_search_runs_the_servers_batched_step_with_its_policy(tiny_model, tiny_corpus):
    """`streamst bench`'s stream count comes from real Sessions through `step_sessions`: the policy's own rounds."""
    audio = read_wav(tiny_corpus[0][0])[0]
    load = measure(tiny_model, parse_policy("streamatt"), 3, audio, ticks=2, warm_chunks=2)
    assert load.rounds >= 2 and 1.0 <= load.mean_batch <= 3.0
    assert load.p95_ms > 0 and load.stream_chunk_ms > 0


def test_bench_rejects_a_missing_model(tmp_path, capsys):
    assert main(["bench", "--quick", "--model", str(tmp_path / "none.pt")]) == 2
    assert "not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ device scheduler


def test_batched_fbank_equals_kaldi_fbank():
    torch.manual_seed(0)
    audio = torch.randn(3, 5360) * 0.1
    audio[1] *= 0.001  # quiet rows reach the log floor
    want = torch.stack([fbank(a) for a in audio])
    got = BatchedFbank(torch.device("cpu"))(audio)
    assert got.shape == want.shape == (3, 32, 80)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-5)


class BoundedReference:
    """What the device scheduler computes, from the model's own lone calls: the cached encoder step per stream,
    a window of the last `memory_frames` frames, the last 16 prefix tokens, 4 greedy tokens of the one decode
    loop, every token before an end committed (AlignAtt off)."""

    def __init__(self, model, memory_frames: int):
        self.model, self.frames = model, memory_frames
        self.state, self.memory, self.prefix = model.init_state(), None, []

    def step(self, audio: torch.Tensor) -> list[int]:
        frames, self.state = self.model.encode(audio, self.state)
        memory = frames if self.memory is None else torch.cat([self.memory, frames])
        self.memory = memory[-self.frames:]
        tok = self.model.tokenizer
        hyp = decode(self.model.net.decoder, self.memory, self.prefix, tok.bos, tok.eos, max_tokens=4)
        self.prefix = (self.prefix + hyp.tokens)[-16:]
        return hyp.tokens


def _run_both(tiny_model, dtype: str, steps: int = 10):
    """Three streams of different ages (the third joins after 3 chunks) through the device scheduler and the
    lone reference; AlignAtt off (frames=0) so both commit every token before eos."""
    tok = tiny_model.tokenizer
    dev = DeviceScheduler(tiny_model.net, tiny_model.mean, tiny_model.std, bos=tok.bos, eos=tok.eos, dtype=dtype,
                          memory_frames=40, alignatt_frames=0)
    dev.allocate(3)
    refs = [BoundedReference(tiny_model, 40) for _ in range(3)]
    bank = audio_bank(torch.device("cpu"))
    got, want = [], []
    for k in range(steps):
        rows = torch.arange(3 if k >= 3 else 2)
        audio = bank[(rows + k) % 8]
        tokens, committed = dev.step(rows, audio)
        got += [tokens[i, :committed[i]].tolist() for i in range(len(rows))]
        want += [refs[i].step(audio[i]) for i in range(len(rows))]
    return got, want, dev


def test_device_scheduler_float32_equals_the_batch_scheduler(tiny_model):
    got, want, dev = _run_both(tiny_model, "float32")
    assert got == want and sum(map(len, want)) > 10
    assert dev.slab.frames[:3].tolist() == [80, 80, 56]
    assert dev.slab.mem_len[:3].tolist() == [40, 40, 40]


def test_device_scheduler_runs_bfloat16_on_cpu_without_touching_the_model(tiny_model):
    got, want, dev = _run_both(tiny_model, "bfloat16")
    assert dev.slab.kv.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in tiny_model.net.parameters())
    same = sum(g == w for g, w in zip(got, want))
    assert same >= 0.7 * len(want)  # bf16 rounding may flip a near-tie


def test_device_scheduler_alignatt_holds_back_tokens_that_attend_to_the_newest_frames(tiny_model):
    tok = tiny_model.tokenizer
    dev = DeviceScheduler(tiny_model.net, tiny_model.mean, tiny_model.std, bos=tok.bos, eos=tok.eos,
                          memory_frames=40, alignatt_frames=40)  # every frame is "too new": nothing commits
    dev.allocate(2, steady=True)
    bank = audio_bank(torch.device("cpu"))
    rows = torch.arange(2)
    before = dev.slab.prefix[:2].clone()
    _, committed = dev.step(rows, bank[:2])
    assert committed.tolist() == [0, 0] and torch.equal(dev.slab.prefix[:2], before)


def test_bench_device_cpu_bfloat16(tiny_model_path, capsys):
    assert main(["bench", "--json", "--quick", "--device", "cpu", "--dtype", "bfloat16", "--max-streams", "4",
                 "--model", str(tiny_model_path)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["device"] == "cpu" and res["dtype"] == "bfloat16" and res["cuda_graphs"] is False
    assert res["rtf"] > 0 and set(res["step_ms_by_batch"]) == {"1", "8", "32"}
    assert 1 <= res["max_realtime_streams"] <= 4 and res["scheduler_p95_ms"]["1"] < 300


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message when CUDA is absent")
def test_bench_device_cuda_without_a_gpu_is_a_clear_error(tiny_model_path, capsys):
    assert main(["bench", "--device", "cuda", "--model", str(tiny_model_path)]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_bench_dtype_needs_a_device(tiny_model_path, capsys):
    assert main(["bench", "--dtype", "bfloat16", "--model", str(tiny_model_path)]) == 2
    assert "--device" in capsys.readouterr().err


def test_bench_random_model_has_the_shape_asked_for_and_rejects_bad_fields(capsys):
    assert main(["bench", "--json", "--quick", "--device", "cpu", "--max-streams", "2",
                 "--random-model", "enc_layers=1,d_model=64,dec_layers=1"]) == 0
    out = capsys.readouterr()
    res = json.loads(out.out.strip().splitlines()[-1])
    assert res["model"] == "random init, ModelConfig(enc_layers=1,d_model=64,dec_layers=1)"
    assert "1-layer d=64 encoder, 1-layer decoder" in out.err
    for spec, message in (("layers=3", "not KEY=VALUE"), ("d_model=wide", "needs an integer"),
                          ("dropout=1", "not KEY=VALUE")):
        assert main(["bench", "--random-model", spec]) == 2
        assert message in capsys.readouterr().err
    assert main(["bench", "--random-model", "d_model=64", "--model", "en-de"]) == 2
    assert "not both" in capsys.readouterr().err
