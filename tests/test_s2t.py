"""Bring your own model (issue #18): a tiny random HF Speech2Text model, saved and loaded in streamst, against
transformers itself; the same weights repacked as a fairseq checkpoint; convert, models, errors, safety and
every policy through a Session. No downloads."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from streamst.decoding import loop_length  # noqa: E402
from streamst.s2t import detect, load_s2t  # noqa: E402
from streamst.s2t.features import Cmvn, fbank, fbank_from, n_frames  # noqa: E402
from streamst.s2t.fixtures import fairseq_from_hf, hf_folder  # noqa: E402


def noise(seconds: float, seed: int) -> np.ndarray:
    """Speech-like test audio: noise under a slow envelope (the model is random anyway)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    env = 0.05 + 0.2 * np.abs(np.sin(np.linspace(0, 7 * seconds, n)))
    return (rng.normal(0, 1, n) * env).astype(np.float32)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2t")
    hf = hf_folder(root / "s2t-tiny-mustc-en-de-st")
    return {"hf": hf, "fairseq": fairseq_from_hf(hf, root / "fairseq-en-de"), "root": root}


@pytest.fixture(scope="module")
def hf_model(folders):
    from transformers import Speech2TextForConditionalGeneration

    return Speech2TextForConditionalGeneration.from_pretrained(folders["hf"]).eval()


@pytest.fixture(scope="module")
def model(folders):
    return load_s2t(folders["hf"])


def hf_features(folder, audio):
    from transformers import Speech2TextFeatureExtractor

    extractor = Speech2TextFeatureExtractor.from_pretrained(folder)
    return extractor(audio, sampling_rate=16000, return_tensors="pt").input_features


# ---------------------------------------------------------------------------------------------------- features

@pytest.mark.parametrize("seconds", [0.03, 0.7, 2.3])
def test_features_equal_speech2text_feature_extractor(folders, model, seconds):
    audio = noise(seconds, 1)
    ours = model.cmvn(fbank(torch.from_numpy(audio)))
    ref = hf_features(folders["hf"], audio)[0]
    assert ours.shape == ref.shape and ours.shape[0] == n_frames(audio.size)
    if ours.shape[0] == 1:  # one frame: zero variance, where the reference divides by zero
        assert torch.isnan(ref).all() and torch.equal(ours, torch.zeros_like(ours))
    else:
        assert torch.allclose(ours, ref, atol=1e-5)


def test_fbank_pieces_equal_the_whole_signal():
    audio = torch.from_numpy(noise(1.9, 2))
    whole = fbank(audio)
    for piece in (1, 160, 555, 5120):
        held, feats = torch.zeros(0), torch.zeros(0, 80)
        for i in range(0, audio.numel(), piece):
            held = torch.cat([held, audio[i:i + piece]])
            feats = torch.cat([feats, fbank_from(held, feats.shape[0])])
        assert feats.shape == whole.shape and torch.allclose(feats, whole, atol=1e-4)


def test_fairseq_utterance_cmvn_is_its_formula():
    x = torch.randn(50, 80) * 3 + 2
    got = Cmvn("utterance_fairseq")(x).numpy()
    xn = x.numpy()
    mean = xn.mean(0)
    std = np.sqrt(np.maximum((xn ** 2).sum(0) / xn.shape[0] - mean ** 2, 1e-10))
    assert np.allclose(got, (xn - mean) / std, atol=1e-5)
    with pytest.raises(ValueError, match="supported"):
        Cmvn("per_speaker")


# ---------------------------------------------------------------------------------------------------- the network

def test_encoder_logits_and_every_cross_attention_head_equal_transformers(folders, model, hf_model):
    audio = noise(2.0, 3)
    feats = hf_features(folders["hf"], audio)
    memory, state = model.encode(torch.from_numpy(audio), model.init_state(), final=True)
    tokens = [2, 17, 5, 30, 8, 22, 11]
    with torch.no_grad():
        ref = hf_model(input_features=feats, decoder_input_ids=torch.tensor([tokens]), output_attentions=True)
    assert memory.shape == ref.encoder_last_hidden_state[0].shape
    assert torch.allclose(memory, ref.encoder_last_hidden_state[0], atol=1e-4)
    dec = model.net.decoder
    mem_kv = dec.project_memory(memory.unsqueeze(0))
    logits, _, attn = dec(torch.tensor([tokens]), mem_kv)  # full (teacher-forced) decoding
    assert torch.allclose(logits, ref.logits, atol=1e-4)
    cross = torch.stack(ref.cross_attentions)  # [layers, batch, heads, tokens, frames]
    assert attn.shape == cross.shape and torch.allclose(attn, cross, atol=1e-4)
    caches, steps, rows = None, [], []
    for t in tokens:  # incremental decoding with the KV cache
        out, caches, a = dec(torch.tensor([[t]]), mem_kv, caches=caches)
        steps.append(out[0, -1])
        rows.append(a[:, 0, :, -1])
    assert torch.allclose(torch.stack(steps), ref.logits[0], atol=1e-4)
    assert torch.allclose(torch.stack(rows, dim=2), cross[:, 0], atol=1e-4)
    # the Hypothesis rows are the cross-attention of the positions that predicted each token
    hyp, _ = model.decode(memory, tokens[1:4], state, max_tokens=3)
    assert torch.allclose(hyp.prefix_attention, cross[:, 0, :, :3], atol=1e-4)


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_greedy_tokens_identical_to_generate(folders, model, hf_model, seed):
    audio = noise(1.0 + seed / 4, seed)
    with torch.no_grad():
        ref = hf_model.generate(hf_features(folders["hf"], audio), num_beams=1, do_sample=False,
                                max_new_tokens=40)[0].tolist()
    assert ref[0] == 2
    ref = ref[1:]
    ended_ref = bool(ref) and ref[-1] == 2
    ref = [t for t in ref if t != 2]
    memory, state = model.encode(torch.from_numpy(audio), model.init_state(), final=True)
    hyp, _ = model.decode(memory, [], state, max_tokens=40)
    assert hyp.tokens == ref[: len(hyp.tokens)] and len(hyp.tokens) > 0
    if hyp.tokens == ref:
        assert hyp.ended == ended_ref or len(ref) == 40
    elif len(hyp.tokens) < 40:  # the repetition guard cut a loop that generate runs to its budget: kept once
        assert hyp.ended and any(loop_length(ref[:k]) == len(hyp.tokens) for k in range(len(hyp.tokens), len(ref) + 1))
    assert hyp.attention.shape == (2, 2, len(hyp.tokens), memory.shape[0])


def test_target_language_tag_is_forced(tmp_path):
    from transformers import Speech2TextForConditionalGeneration

    folder = hf_folder(tmp_path / "s2t-multilingual", langs=["de", "fr"], seed=7)
    ref_model = Speech2TextForConditionalGeneration.from_pretrained(folder).eval()
    with pytest.raises(ValueError, match="multilingual.*de, fr"):
        load_s2t(folder)
    m = load_s2t(folder, tgt_lang="fr")
    lang = m.tokenizer.languages["fr"]
    assert m.lang_prefix == [lang] and m.tokenizer.decode([lang, 5]) == m.tokenizer.decode([5])
    audio = noise(1.5, 8)
    with torch.no_grad():
        ref = ref_model.generate(hf_features(folder, audio), num_beams=1, do_sample=False, max_new_tokens=20,
                                 forced_bos_token_id=lang)[0].tolist()
    assert ref[:2] == [2, lang]
    memory, state = m.encode(torch.from_numpy(audio), m.init_state(), final=True)
    hyp, _ = m.decode(memory, [], state, max_tokens=18)
    ref = [t for t in ref[2:] if t != 2]
    assert hyp.tokens == ref[: len(hyp.tokens)] and hyp.tokens
    # with a committed prefix, prefix attention covers the prefix only (not the tag)
    hyp2, _ = m.decode(memory, ref[:2], state, max_tokens=3)
    assert hyp2.prefix_attention.shape[2] == 2
    with pytest.raises(ValueError, match="no target language 'xx'"):
        load_s2t(folder, tgt_lang="xx")


def test_beam_search(model):
    audio = torch.from_numpy(noise(1.5, 9))
    memory, state = model.encode(audio, model.init_state(), final=True)
    greedy, _ = model.decode(memory, [], state, beam=1, max_tokens=20)
    beam, _ = model.decode(memory, [], state, beam=4, max_tokens=20)
    assert beam.tokens and all(0 <= t < len(model.tokenizer) for t in beam.tokens)
    assert beam.attention.shape == (2, 2, len(beam.tokens), memory.shape[0])
    assert np.isfinite(beam.score) and np.isfinite(greedy.score)


# ---------------------------------------------------------------------------------------------------- fairseq

def test_fairseq_repack_gives_identical_outputs(folders, model):
    from streamst.s2t.net import encode_features

    fs = load_s2t(folders["fairseq"])
    assert fs.cmvn.kind == "utterance_fairseq" and fs.cfg == model.cfg
    for seed in (10, 11):
        audio = torch.from_numpy(noise(1.7, seed))
        feats = model.cmvn(fbank(audio))  # the same features into both networks: identical outputs
        e1, e2 = encode_features(model.net, feats), encode_features(fs.net, feats)
        assert torch.equal(e1.memory, e2.memory)
        # from audio, each with its own CMVN formula (HF's std vs fairseq's E[x^2] - mean^2: float rounding only)
        m1, s1 = model.encode(audio, model.init_state(), final=True)
        m2, s2 = fs.encode(audio, fs.init_state(), final=True)
        assert torch.allclose(model.cmvn(fbank(audio)), fs.cmvn(fbank(audio)), atol=3e-3)
        assert torch.allclose(m1, m2, atol=1e-3)
        h1, _ = model.decode(m1, [], s1, max_tokens=30)
        h2, _ = fs.decode(m2, [], s2, max_tokens=30)
        assert h1.tokens == h2.tokens and torch.allclose(h1.attention, h2.attention, atol=1e-3)


def test_fairseq_config_as_omegaconf_like_objects(folders, tmp_path):
    """Newer fairseq pickles `cfg` as omegaconf containers: read without importing omegaconf."""
    import shutil
    import sys
    import types

    from streamst.s2t.safe_pickle import load_checkpoint

    src = folders["fairseq"]
    obj = torch.load(src / "checkpoint_best.pt", weights_only=False)
    fake = types.ModuleType("omegaconf_fake_for_test")

    class Node:
        def __init__(self, val):
            self._val = val

    class DictConfig:
        def __init__(self, content):
            self._content = {k: (DictConfig(v) if isinstance(v, dict) else Node(v)) for k, v in content.items()}

    Node.__module__ = DictConfig.__module__ = fake.__name__
    Node.__qualname__, DictConfig.__qualname__ = "Node", "DictConfig"
    fake.Node, fake.DictConfig = Node, DictConfig
    sys.modules[fake.__name__] = fake
    try:
        model_args = {k: v for k, v in vars(obj["args"]).items()}
        cfg = DictConfig({"model": dict(model_args, _name=model_args.pop("arch")), "task": {"_name": "speech_to_text"}})
        out = tmp_path / "hydra"
        shutil.copytree(src, out)
        torch.save({"cfg": cfg, "model": obj["model"]}, out / "checkpoint_best.pt")
    finally:
        del sys.modules[fake.__name__]
    assert "omegaconf_fake_for_test" not in sys.modules
    loaded = load_checkpoint(out / "checkpoint_best.pt")
    assert type(loaded["cfg"]).__name__ == "DictConfig" and type(loaded["cfg"]).__module__ == "streamst.s2t.safe_pickle"
    m = load_s2t(out)
    assert m.cfg.encoder_heads == 2 and m.bundle.meta["format"] == "fairseq s2t_transformer_s"


def test_pickled_code_never_runs(folders, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import shutil

    out = tmp_path / "evil"
    shutil.copytree(folders["fairseq"], out)
    obj = torch.load(out / "checkpoint_best.pt", weights_only=False)
    obj["extra_state"] = {"payload": Evil()}
    torch.save(obj, out / "checkpoint_best.pt")
    m = load_s2t(out)
    assert not marker.exists() and m.cfg.encoder_layers == 2


@pytest.mark.parametrize("key,value,message", [
    ("decoder_learned_pos", True, "learned decoder positions"),
    ("layernorm_embedding", True, "layer norm on the embeddings"),
    ("encoder_attention_heads", 3, "heads \\(3\\) must divide"),
])
def test_unsupported_fairseq_configs_are_clear_errors(folders, tmp_path, key, value, message):
    import shutil

    out = tmp_path / "bad"
    shutil.copytree(folders["fairseq"], out)
    obj = torch.load(out / "checkpoint_best.pt", weights_only=False)
    setattr(obj["args"], key, value)
    torch.save(obj, out / "checkpoint_best.pt")
    with pytest.raises(ValueError, match=message):
        load_s2t(out)
    from streamst.cli import main

    assert main(["convert", str(out), "--out", str(tmp_path / "x.pt")]) == 2


def test_foreign_architecture_and_missing_files(folders, tmp_path, capsys):
    import shutil

    out = tmp_path / "berard"
    shutil.copytree(folders["fairseq"], out)
    obj = torch.load(out / "checkpoint_best.pt", weights_only=False)
    obj["model"] = {k.replace("transformer_layers", "lstm_layers"): v for k, v in obj["model"].items()}
    torch.save(obj, out / "checkpoint_best.pt")
    with pytest.raises(ValueError, match="unsupported fairseq model 's2t_transformer_s'"):
        load_s2t(out)
    out2 = tmp_path / "nodict"
    shutil.copytree(folders["fairseq"], out2)
    (out2 / "dict.txt").unlink()
    with pytest.raises(FileNotFoundError, match="dictionary 'dict.txt' not found"):
        load_s2t(out2)
    from streamst.cli import main

    assert main(["translate", "--model", str(out2), str(tmp_path / "none.wav")]) == 2
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------- commands

def test_load_model_convert_and_models(folders, model, tmp_path, capsys):
    from streamst.checkpoint import describe_model, load_model
    from streamst.cli import main

    assert detect(folders["hf"]) == "huggingface" and detect(folders["fairseq"]) == "fairseq"
    assert detect(folders["fairseq"] / "checkpoint_best.pt") == "fairseq" and detect(tmp_path) is None
    for src in (folders["hf"], folders["fairseq"], folders["fairseq"] / "checkpoint_best.pt"):
        assert type(load_model(str(src))).__name__ == "S2TStreamingModel"
    out = tmp_path / "converted.pt"
    assert main(["convert", str(folders["hf"]), "--out", str(out), "--float32"]) == 0
    assert "transformer encoder 2 layers" in capsys.readouterr().out
    converted = load_model(str(out))
    obj = torch.load(out, weights_only=True)  # plain tensors and values
    assert obj["kind"] == "s2t" and obj["task"] == "st" and (obj["src_lang"], obj["tgt_lang"]) == ("en", "de")
    audio = torch.from_numpy(noise(1.2, 12))
    m1, s1 = model.encode(audio, model.init_state(), final=True)
    m2, s2 = converted.encode(audio, converted.init_state(), final=True)
    assert torch.equal(m1, m2)
    assert model.decode(m1, [], s1, max_tokens=20)[0].tokens == converted.decode(m2, [], s2, max_tokens=20)[0].tokens
    row = describe_model("x", folders["hf"])
    assert (row["task"], row["languages"]) == ("st", "en-de") and "Speech2Text" in row["format"]
    assert main(["models", str(folders["fairseq"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert rows[0]["format"].startswith("fairseq s2t_transformer_s") and rows[0]["task"] == "st"


# ---------------------------------------------------------------------------------------------------- sessions

POLICIES = ["waitk:k=2", "la:n=2", "edatt:alpha=0.2", "alignatt:frames=4", "alignatt:frames=4,layer=0,heads=mean",
            "streamatt:frames=4,history_words=2,max_memory_s=2", "offline"]


def run_session(model, policy: str, audio: np.ndarray, beam: int = 1):
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    session = Session(model, parse_policy(policy), chunk_ms=320, beam=beam)
    events = []
    for i in range(0, audio.size, 2560):
        events += session.push(audio[i:i + 2560])
    events += session.finish()
    return [e for e in events if isinstance(e, Word)], session


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_streams_the_loaded_model(model, policy):
    audio = noise(4.0, 13)
    words, session = run_session(model, policy, audio)
    assert words, policy
    delays = [w.emitted_ms for w in words]
    assert delays == sorted(delays) and delays[-1] <= session.source_ms
    if policy == "offline":
        assert set(delays) == {session.source_ms}
    if policy.startswith("streamatt"):
        assert session.frames_dropped > 0  # the re-encoded window was cut from the front


def test_policy_settings_change_delays_and_beam_streams(model):
    audio = noise(4.0, 14)
    eager, _ = run_session(model, "waitk:k=1", audio)
    lazy, _ = run_session(model, "waitk:k=6", audio)
    assert eager and lazy
    mean = lambda ws: sum(w.emitted_ms for w in ws) / len(ws)  # noqa: E731
    assert mean(eager) < mean(lazy)
    words, _ = run_session(model, "alignatt:frames=4", audio, beam=3)
    assert words


def test_streamatt_bounds_the_encoded_window(model):
    audio = noise(12.0, 15)
    _, session = run_session(model, "streamatt:frames=4,history_words=4,max_memory_s=3", audio)
    held = session.model_state.audio.numel() / 16000
    assert session.frames_dropped > 0 and held < 12.0


def tiny_mustc_en_de(root, segments: int = 3):
    """A MuST-C v1 layout (en-de, tst-COMMON) of one talk of noise segments with made-up references."""
    import soundfile as sf

    split = root / "en-de" / "data" / "tst-COMMON"
    (split / "wav").mkdir(parents=True)
    (split / "txt").mkdir()
    audio, yaml_lines, offset = [], [], 0.2
    for k in range(segments):
        seg = noise(1.2 + 0.3 * k, 20 + k)
        audio += [np.zeros(3200, np.float32), seg]
        yaml_lines.append(f"- {{duration: {seg.size / 16000:.6f}, offset: {offset:.6f}, speaker_id: spk0, "
                          "wav: talk0.wav}\n")
        offset += seg.size / 16000 + 0.2
    sf.write(split / "wav" / "talk0.wav", np.concatenate(audio), 16000, subtype="FLOAT")
    (split / "txt" / "tst-COMMON.yaml").write_text("".join(yaml_lines))
    (split / "txt" / "tst-COMMON.en").write_text("the cat sat\na dog ran\nhello world\n"[: 100])
    (split / "txt" / "tst-COMMON.de").write_text("die katze sass\nein hund lief\nhallo welt\n")
    return root


def test_eval_and_sweep_on_mustc_with_a_converted_model(folders, tmp_path, capsys):
    from streamst.cli import main

    mustc = tiny_mustc_en_de(tmp_path / "mustc")
    model = tmp_path / "s2t-en-de.pt"
    assert main(["convert", str(folders["hf"]), "--out", str(model)]) == 0
    out = tmp_path / "eval"
    assert main(["eval", "--mustc", str(mustc), "--pair", "en-de", "--model", str(model), "--policy",
                 "alignatt:frames=4,layer=0,heads=mean,exclude_last=1", "--out", str(out), "--no-progress"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert json.dumps(scores).count("BLEU") >= 1 and "LAAL" in json.dumps(scores)
    sweep = tmp_path / "sweep"
    assert main(["sweep", "--mustc", str(mustc), "--pair", "en-de", "--model", str(model), "--policies",
                 "waitk:k=1;waitk:k=4", "--no-offline", "--out", str(sweep), "--no-progress"]) == 0
    assert "waitk" in capsys.readouterr().out
    assert main(["eval", "--mustc", str(mustc), "--pair", "en-es", "--model", str(model), "--out",
                 str(tmp_path / "wrong"), "--no-progress"]) == 2
    assert "is en-de, but --pair en-es" in capsys.readouterr().err  # the converted model knows its languages
    # the Hugging Face folder itself, in one command (its words differ from the fp16 conversion's on this random model)
    direct = tmp_path / "eval-folder"
    assert main(["eval", "--mustc", str(mustc), "--pair", "en-de", "--model", str(folders["hf"]), "--policy",
                 "alignatt:frames=4,layer=0,heads=mean,exclude_last=1", "--out", str(direct), "--no-progress"]) == 0
    def predictions(folder):
        return [(r["prediction"], r["delays"]) for r in map(json.loads, (folder / "instances.log").read_text().splitlines())]

    assert len(predictions(direct)) == len(predictions(out)) > 0 and all(p for p, _ in predictions(direct))


def test_the_server_scheduler_steps_s2t_streams_like_lone_sessions(model):
    from streamst.batching.sessions import step_sessions
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    audios = [noise(3.0, 30), noise(2.4, 31)]
    lone = [[w.text for w in run_session(model, "alignatt:frames=4", a)[0]] for a in audios]
    sessions = [Session(model, parse_policy("alignatt:frames=4"), chunk_ms=320) for _ in audios]
    words = [[], []]
    for i in range(0, max(a.size for a in audios), 5120):
        rows = [(s, a[i:i + 5120], False) for s, a in zip(sessions, audios) if i < a.size]
        chunks = [(s, c, f) for s, pcm, f in rows for c, f in s.take_chunks(pcm)]
        for (s, _, _), events in zip(chunks, step_sessions(chunks)):
            assert not isinstance(events, BaseException)
            words[sessions.index(s)] += [e.text for e in events if isinstance(e, Word)]
    for k, s in enumerate(sessions):
        words[k] += [e.text for e in s.finish() if isinstance(e, Word)]
    assert words == lone and all(lone)


def test_the_window_cap_cuts_old_audio_and_keeps_word_times_on_the_stream_clock(folders):
    from streamst.s2t import load_bundle
    from streamst.s2t.streaming import S2TStreamingModel

    capped = S2TStreamingModel(load_bundle(folders["hf"]), max_window_s=2.0)
    audio = noise(6.0, 40)
    words, session = run_session(capped, "alignatt:frames=4", audio)
    state = session.model_state
    assert capped.samples_cut(state) > 0 and state.audio.numel() <= 2.0 * 16000 + 640
    assert session.memory.shape[0] <= 50
    assert words and all(w.start_ms is None or 0 <= w.start_ms <= w.end_ms <= session.source_ms for w in words)
    assert load_s2t(folders["hf"]).max_frames == 3000 // 4  # the trained input limit: 3000 fbank frames here
    _, held = capped.encode(torch.from_numpy(noise(1.0, 41)), capped.init_state())
    assert not capped.needs_commit(held)
    _, held = capped.encode(torch.from_numpy(noise(1.8, 42)), held)
    assert capped.needs_commit(held)  # within a fifth of the 2 s cap: the session commits what it holds
    with pytest.raises(ValueError, match="two encoder frames"):
        S2TStreamingModel(load_bundle(folders["hf"]), max_window_s=0.05)


def test_tokenizer_equals_speech2text_tokenizer(folders, model):
    from transformers import Speech2TextTokenizer

    ref = Speech2TextTokenizer.from_pretrained(folders["hf"])
    for text in ("the cat sat on the mat", "hello world again", "a zebra jumps quickly"):
        ids = ref(text).input_ids
        assert ids[-1] == model.tokenizer.eos and model.tokenizer.encode(text) == ids[:-1]
        assert model.tokenizer.decode(ids) == ref.decode(ids, skip_special_tokens=True)
        assert model.tokenizer.pieces(ids[:-1]) == ref.convert_ids_to_tokens(ids[:-1])
