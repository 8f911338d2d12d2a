"""The ONNX export and the onnxruntime backend against the torch backend on the real tiny model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from streamst.audio import AudioFormat  # noqa: E402
from streamst.cli import main  # noqa: E402
from streamst.eval.quality import wer  # noqa: E402
from streamst.events import Word  # noqa: E402
from streamst.onnx_backend import load_onnx_model  # noqa: E402
from streamst.onnx_export import export_onnx  # noqa: E402
from streamst.policies import parse_policy  # noqa: E402
from streamst.scheduler_batch import BatchScheduler, StepRunner, greedy_batch  # noqa: E402
from streamst.session import Session  # noqa: E402
from streamst.testing import read_wav  # noqa: E402


@pytest.fixture(scope="module")
def onnx_dir(tiny_model, tmp_path_factory):
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "fp32")


@pytest.fixture(scope="module")
def onnx_model(onnx_dir):
    return load_onnx_model(onnx_dir)


def _words(model, wav, policy, beam=1):
    audio, sr = read_wav(wav)
    s = Session(model, parse_policy(policy), AudioFormat(sample_rate=sr), beam=beam)
    events = []
    for i in range(0, audio.size, 3000):
        events += s.push(audio[i:i + 3000])
    events += s.finish()
    return [e.text for e in events if isinstance(e, Word)], [e.emitted_ms for e in events if isinstance(e, Word)]


def test_encoder_graph_equals_torch_steps_for_two_streams_of_different_ages(tiny_model, onnx_dir):
    """One batched call over two streams (one fresh, one 3 chunks old), several chunks at once, matches
    the torch encoder stepping each stream chunk by chunk."""
    net, cfg = tiny_model.net, tiny_model.net.cfg
    runner = StepRunner(cfg, onnx_dir=onnx_dir)
    torch.manual_seed(0)
    c = cfg.chunk_frames
    old = torch.randn(1, 4 * 3 * c, cfg.n_mels)
    new = torch.randn(2, 4 * 2 * c, cfg.n_mels)
    st_old = net.encoder.init_state(1)
    with torch.no_grad():
        _, st_old = net.encoder.step(old, st_old, c, cfg.left_frames)
        want_old, _ = net.encoder.step(new[1:], st_old, c, cfg.left_frames)
        want_fresh, _ = net.encoder.step(new[:1], net.encoder.init_state(1), c, cfg.left_frames)
    fresh = net.encoder.init_state(1)
    kv_old = torch.stack(st_old.kv)  # 3 chunks so far: fewer frames than the `left` slots, padded in front
    kv_old = torch.cat([kv_old.new_zeros(*kv_old.shape[:3], cfg.left_frames - kv_old.shape[3], cfg.d_model), kv_old], 3)
    kv_fresh = torch.zeros_like(kv_old)
    feeds = {"feats": new.numpy(), "sub1": torch.cat([fresh.sub[0], st_old.sub[0]]).numpy(),
             "sub2": torch.cat([fresh.sub[1], st_old.sub[1]]).numpy(), "kv": torch.cat([kv_fresh, kv_old], 1).numpy(),
             "conv": torch.cat([torch.stack(fresh.conv), torch.stack(st_old.conv)], 1).numpy(),
             "frames": np.array([0, 3 * c])}
    out = runner.encoder(feeds)[0]
    np.testing.assert_allclose(out[0], want_fresh[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(out[1], want_old[0].numpy(), atol=1e-4)


@pytest.mark.parametrize("policy", ["waitk:k=2", "alignatt:frames=6", "streamatt:frames=6,history_words=4"])
def test_onnx_backend_commits_the_same_words_as_torch(tiny_model, onnx_model, tiny_corpus, policy):
    """fp32 parity through the Session; alignatt and streamatt read the cross-attention of the ONNX decoder."""
    for wav, _ in tiny_corpus[:4]:
        got = _words(onnx_model, wav, policy)
        assert got[0] and got == _words(tiny_model, wav, policy)


def test_onnx_beam_search_matches_torch(tiny_model, onnx_model, tiny_corpus):
    wav, _ = tiny_corpus[1]
    got = _words(onnx_model, wav, "waitk:k=2", beam=3)
    assert got[0] and got == _words(tiny_model, wav, "waitk:k=2", beam=3)


def test_batched_greedy_with_padding_equals_one_stream_at_a_time(tiny_model, onnx_dir):
    cfg = tiny_model.net.cfg
    torch.manual_seed(1)
    memories = [torch.randn(n, cfg.d_model) for n in (4, 19, 33)]
    prefixes = [[], [5, 6, 7, 8], [9]]
    want = [tiny_model.decode(m, p, max_tokens=5).tokens for m, p in zip(memories, prefixes)]
    for runner in (StepRunner(cfg, onnx_dir=onnx_dir), StepRunner(cfg, net=tiny_model.net)):
        got = greedy_batch(runner, [m.numpy() for m in memories], prefixes, tiny_model.tokenizer.bos,
                           tiny_model.tokenizer.eos, 5)
        assert got == want, runner.backend


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


def test_batch_scheduler_slot_state_stays_flat(tiny_model, onnx_dir):
    sched = BatchScheduler(StepRunner(tiny_model.net.cfg, onnx_dir=onnx_dir), tiny_model.mean, tiny_model.std,
                           bos=tiny_model.tokenizer.bos, eos=tiny_model.tokenizer.eos, memory_frames=40)
    slots = [sched.new_stream() for _ in range(3)]
    rng = np.random.default_rng(0)
    sizes = []
    for _ in range(30):
        sched.step(slots, [torch.from_numpy(rng.standard_normal(5120).astype(np.float32) * 0.1) for _ in slots])
        sizes.append([(s.kv.shape, s.conv.shape, s.memory.shape, len(s.prefix)) for s in slots])
    assert sizes[10] == sizes[-1]
    assert slots[0].frames == 30 * tiny_model.net.cfg.chunk_frames


def test_export_cli_int8_loses_little_on_the_tiny_corpus(tiny_model_path, tiny_corpus, onnx_model, tmp_path):
    out = tmp_path / "int8"
    assert main(["export-onnx", str(tiny_model_path), "--out", str(out), "--int8"]) == 0
    int8 = load_onnx_model(out)
    assert int8.int8 and (out / "encoder.onnx").stat().st_size < 0.5 * (onnx_model.folder / "encoder.onnx").stat().st_size
    refs, fp32_hyps, int8_hyps = [], [], []
    for wav, text in tiny_corpus[:12]:
        refs.append(text)
        fp32_hyps.append(" ".join(_words(onnx_model, wav, "waitk:k=2")[0]))
        int8_hyps.append(" ".join(_words(int8, wav, "waitk:k=2")[0]))
    # wer() is in percent; int8 weights of a 96-wide model cost a few words on 12 sentences (0 to 9 points seen)
    assert wer(int8_hyps, refs) <= wer(fp32_hyps, refs) + 15.0


def test_load_rejects_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_onnx_model(tmp_path)
    (tmp_path / "model.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a streamst ONNX export"):
        load_onnx_model(tmp_path)
