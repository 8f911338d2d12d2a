"""The ONNX export and the onnxruntime backend against the torch backend on the real tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from streamst.audio import AudioFormat  # noqa: E402
from streamst.bench_quality import Utterance, agreement, compare_backends  # noqa: E402
from streamst.cli import main  # noqa: E402
from streamst.events import Word  # noqa: E402
from streamst.onnx_backend import load_onnx_model, make_session  # noqa: E402
from streamst.onnx_export import export_onnx  # noqa: E402
from streamst.policies import parse_policy  # noqa: E402
from streamst.batching.steps import greedy_many  # noqa: E402
from streamst.decoding import decode  # noqa: E402
from streamst.session import Session  # noqa: E402
from streamst.testing import read_wav  # noqa: E402


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tmp_path_factory):
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="module")
def onnx_model(onnx_dir):
    return load_onnx_model(onnx_dir)


def test_encoder_graph_equals_torch_steps_for_two_streams_of_different_ages(tiny_model, onnx_dir):
    """One batched call over two streams (one fresh, one 3 chunks old), several chunks at once, matches
    the torch encoder stepping each stream chunk by chunk."""
    net, cfg = tiny_model.net, tiny_model.net.cfg
    encoder = make_session(onnx_dir / "encoder.onnx")
    torch.manual_seed(0)
    c = cfg.chunk_frames
    old = torch.randn(1, 4 * 3 * c, cfg.n_mels)
    new = torch.randn(2, 4 * 2 * c, cfg.n_mels)
    st_old = net.encoder.init_state(1)
    with torch.no_grad():
        _, st_old = net.encoder.step(old, st_old, c, cfg.left_frames)
        want_old, _ = net.encoder.step(new[1:], st_old, c, cfg.left_frames)
        want_fresh, _ = net.encoder.step(new[:1], net.encoder.init_state(1), c, cfg.left_frames)
    fresh = net.encoder.init_state(1)  # 3 chunks so far: fewer frames than the `left` slots, the rest masked
    feeds = {"feats": new.numpy(), "sub1": torch.cat([fresh.sub[0], st_old.sub[0]]).numpy(),
             "sub2": torch.cat([fresh.sub[1], st_old.sub[1]]).numpy(), "kv": torch.cat([fresh.kv, st_old.kv], 1).numpy(),
             "conv": torch.cat([fresh.conv, st_old.conv], 1).numpy(), "frames": np.array([0, 3 * c])}
    out = encoder.run(None, feeds)[0]
    np.testing.assert_allclose(out[0], want_fresh[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(out[1], want_old[0].numpy(), atol=1e-4)


# every policy kind, with the options that change what they read (attention rows, z-scores, prefix attention,
# source word counts from CTC, the history StreamAtt keeps); the same list as the torch session tests and more
SESSION_POLICIES = ["waitk:k=2", "waitk:k=1,unit=word", "la:n=2", "la:n=3", "edatt:alpha=0.2,lambda=2",
                    "edatt:alpha=0.1,norm=none", "alignatt:frames=6", "alignatt:frames=4,zscore=1",
                    "streamatt:frames=6,history_words=4", "streamatt:frames=4,history=punct", "offline"]


def _events(model, audio, policy, piece=3000, beam=1):
    """Every event of a stream as comparable tuples (compute time left out), and where finish() starts."""
    s = Session(model, parse_policy(policy), beam=beam)
    events = []
    for i in range(0, audio.size, piece):
        events += s.push(audio[i:i + piece])
    n_before_finish = len(events)
    events += s.finish()
    rows = [("W", e.text, e.emitted_ms, e.start_ms, e.end_ms) if isinstance(e, Word) else ("P", e.text, e.source_ms)
            for e in events]
    return rows, n_before_finish, s


@pytest.mark.parametrize("policy", SESSION_POLICIES)
def test_onnx_backend_passes_the_session_like_torch(tiny_model, onnx_model, tiny_corpus, policy):
    """fp32 parity through the Session for every policy: the same words at the same source time, the same
    attention spans and partials, and finish() flushes the same last words. The attention policies read
    the cross-attention of the ONNX decoder; edatt reads the prefix attention; la compares hypotheses."""
    flushed = 0
    for wav, text in tiny_corpus[:4]:
        audio = read_wav(wav)[0]
        got, n_got, s = _events(onnx_model, audio, policy)
        want, n_want, _ = _events(tiny_model, audio, policy)
        assert got == want and n_got == n_want
        words = [r[1] for r in got if r[0] == "W"]
        assert words and len(words) <= 2 * len(text.split())
        assert s.finished and s.memory.shape[0] > 0
        flushed += any(r[0] == "W" for r in got[n_got:])
    if policy == "offline":
        assert flushed == 4  # everything is written by finish()


def test_onnx_session_on_a_long_stream_with_streamatt_trims_memory_like_torch(tiny_model, onnx_model, tiny_corpus):
    """Eight utterances back to back (about 10 s): StreamAtt drops frames from the memory and words from the
    prefix on both backends alike (how much it drops is the policy's business, pinned by test_policies_session).
    The 3 s memory cap makes it drop whatever the tiny model's attention aligns to (a retrained tiny model may
    align its uncommitted tokens to the first frames, which alone keeps every frame)."""
    audio = np.concatenate([read_wav(wav)[0] for wav, _ in tiny_corpus[:8]])
    spec = "streamatt:frames=6,history_words=4,max_memory_s=3"
    got, _, s_onnx = _events(onnx_model, audio, spec, piece=5120)
    want, _, s_torch = _events(tiny_model, audio, spec, piece=5120)
    assert got == want
    assert s_onnx.frames_dropped == s_torch.frames_dropped > 0
    total = s_onnx.memory.shape[0] + s_onnx.frames_dropped
    assert total == pytest.approx(audio.size / 640, abs=2)


def test_onnx_session_rejects_bad_audio_and_finishes_an_empty_stream(onnx_model, tiny_corpus):
    wav, text = tiny_corpus[0]
    audio, sr = read_wav(wav)
    s = Session(onnx_model, parse_policy("offline"), AudioFormat(sample_rate=sr, encoding="pcm_s16le"))
    pcm = (audio * 32767).astype("<i2").tobytes()
    s.push(pcm[: len(pcm) // 4 * 2])
    with pytest.raises(ValueError):
        s.push(b"\x01")
    s.push(pcm[len(pcm) // 4 * 2:])
    assert [e.text for e in s.finish() if isinstance(e, Word)] == text.split()
    empty = Session(onnx_model, parse_policy("waitk:k=2"))
    assert [e for e in empty.finish() if isinstance(e, Word)] == []


def test_export_leaves_the_torch_model_in_eval_mode(tiny_model, onnx_dir):
    """The exporter restores each module's own mode; the export must not switch the caller's model to training."""
    assert not any(m.training for m in tiny_model.net.modules())


def test_onnx_beam_search_matches_torch(tiny_model, onnx_model, tiny_corpus):
    for wav, _ in tiny_corpus[1:3]:
        audio = read_wav(wav)[0]
        got = _events(onnx_model, audio, "alignatt:frames=6", beam=3)[0]
        assert got and got == _events(tiny_model, audio, "alignatt:frames=6", beam=3)[0]


def test_the_one_greedy_loop_gives_the_same_rows_over_onnx_torch_and_the_torch_batch(tiny_model, onnx_model):
    """Memories and prefixes of different lengths: the ONNX decoder graphs one row at a time, the torch decoder
    one row at a time and the torch decoder's padded batch write the same tokens under the one loop."""
    cfg = tiny_model.net.cfg
    tok = tiny_model.tokenizer
    torch.manual_seed(1)
    memories = [torch.randn(n, cfg.d_model) for n in (4, 19, 33)]
    prefixes = [[], [5, 6, 7, 8], [9]]
    want = [decode(tiny_model.net.decoder, m, p, tok.bos, tok.eos, max_tokens=5).tokens
            for m, p in zip(memories, prefixes)]
    onnx = [decode(onnx_model.decoder, m, p, tok.bos, tok.eos, max_tokens=5).tokens for m, p in zip(memories, prefixes)]
    batch = [h.tokens for h in greedy_many(tiny_model.net.decoder, memories, prefixes, tok.bos, tok.eos, [5] * 3)[0]]
    assert onnx == want and batch == want and any(want)


def _state_shapes(value) -> list[tuple]:
    """Shapes of every tensor or array inside a state value (dataclasses, lists and tuples walked)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return [tuple(value.shape)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _state_shapes(v)]
    if hasattr(value, "__dict__"):
        return [s for v in vars(value).values() for s in _state_shapes(v)]
    return []


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_per_chunk_state_size_stays_flat(tiny_model, onnx_model, backend):
    """Every state tensor has the same shape after 10 chunks and after 150 chunks (48 s) of audio."""
    model = tiny_model if backend == "torch" else onnx_model
    rng = np.random.default_rng(0)
    state = model.init_state()
    shapes = {}
    for i in range(1, 151):
        _, state = model.encode(torch.from_numpy(rng.standard_normal(5120).astype(np.float32) * 0.1), state)
        if i in (10, 150):
            shapes[i] = _state_shapes(state)
    assert len(shapes[10]) >= 4
    assert shapes[10] == shapes[150]


def test_export_cli_int8_keeps_most_words_through_the_session(tiny_model_path, tiny_model, tiny_corpus, onnx_model,
                                                             tmp_path):
    """int8 through the real Session: most committed words agree with fp32, the CTC transcript barely moves."""
    out = tmp_path / "int8"
    assert main(["export-onnx", str(tiny_model_path), "--out", str(out), "--int8"]) == 0
    int8 = load_onnx_model(out)
    assert int8.int8 and (out / "encoder.onnx").stat().st_size < 0.5 * (onnx_model.folder / "encoder.onnx").stat().st_size
    utts = [Utterance(read_wav(wav)[0], text, text) for wav, text in tiny_corpus[:12]]
    q = compare_backends({"torch": tiny_model, "onnx": onnx_model, "int8": int8}, utts, "waitk:k=2")
    assert q["agreement"]["onnx_vs_torch"] == 1.0
    # int8 weights of a 96-wide model change a few words of 12 sentences (agreement 0.91 seen, CTC 1.0)
    assert 0.75 <= q["agreement"]["int8_vs_onnx"] and q["ctc_agreement"]["int8_vs_onnx"] >= 0.9
    assert q["int8"]["wer"] <= q["onnx"]["wer"] + 20.0


def test_agreement_counts_word_edits_against_the_reference_side():
    assert agreement(["a b c d"], ["a b c d"]) == 1.0
    assert agreement(["a x c d", ""], ["a b c d", ""]) == 0.75
    assert agreement(["a b c d e f g h i"], ["a"]) == 0.0  # floored
    assert agreement([""], [""]) == 1.0 and agreement(["a"], [""]) == 0.0


def test_load_rejects_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_onnx_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a streamst ONNX export"):
        load_onnx_model(tmp_path)
