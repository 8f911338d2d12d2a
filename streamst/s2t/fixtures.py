"""Tiny random S2T models in each foreign layout, for the tests and `bench/s2t_reencode.py` (no downloads).

`hf_folder` needs `transformers` (the test extra); the fairseq repack and the FBK Conformer builder need only
torch. The FBK builder names every weight as FBK-fairseq's modules do, independently of streamst's modules.
"""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "we speak and they listen", "hello world again",
    "streaming speech translation is hard", "the quick brown fox jumps over the lazy dog",
    "many words make a small vocabulary", "one two three four five six seven",
]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]


def tiny_spm(vocab_size: int = 40, model_type: str = "unigram") -> bytes:
    """A SentencePiece model trained in memory (fairseq's id convention: <unk> 0, <s> 1, </s> 2); `word`
    pieces make every token a word, which random decoders need to write more than one word."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(SENTENCES), model_writer=buf, vocab_size=vocab_size,
                                   model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
                                   minloglevel=2)
    return buf.getvalue()


def dictionary(sp_proto: bytes, langs: list[str] = ()) -> list[str]:
    """The fairseq dictionary of a SentencePiece model: specials, its pieces, then <lang:xx> tags."""
    sp = spm.SentencePieceProcessor(model_proto=sp_proto)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    return SPECIALS + [p for p in pieces if p not in ("<unk>", "<s>", "</s>")] + [f"<lang:{x}>" for x in langs]


def hf_folder(out: str | Path, *, d_model: int = 16, layers: int = 2, heads: int = 2, ffn: int = 32,
              langs: list[str] = (), tgt_lang: str | None = None, tied: bool = False, seed: int = 0) -> Path:
    """Save a random `Speech2TextForConditionalGeneration` with its tokenizer and feature extractor files."""
    from transformers import Speech2TextConfig, Speech2TextFeatureExtractor, Speech2TextForConditionalGeneration

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proto = tiny_spm(44, "word")
    vocab = dictionary(proto, list(langs))
    torch.manual_seed(seed)
    config = Speech2TextConfig(
        vocab_size=len(vocab), d_model=d_model, encoder_layers=layers, decoder_layers=layers,
        encoder_attention_heads=heads, decoder_attention_heads=heads, encoder_ffn_dim=ffn, decoder_ffn_dim=ffn,
        conv_channels=2 * d_model, max_source_positions=3000, max_target_positions=256, dropout=0.0,
        tie_word_embeddings=tied)
    model = Speech2TextForConditionalGeneration(config).eval()
    with torch.no_grad():  # livelier than the default init: unit-gain weights, layer norms and biases off 1 and 0,
        for name, p in model.named_parameters():  # so that the output depends on the audio
            if name.endswith("bias") or "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            elif p.dim() >= 2 and "embed" not in name:
                p.normal_(0, p[0].numel() ** -0.5)
        out_w = model.lm_head.weight
        out_w.normal_(0, 0.5)
        out_w[2] *= 0.3  # </s> rarely wins, so greedy decoding writes some tokens before it ends
    model.save_pretrained(out)
    (out / "sentencepiece.bpe.model").write_bytes(proto)
    (out / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocab)}))
    Speech2TextFeatureExtractor().save_pretrained(out)
    tok_cfg = {"tokenizer_class": "Speech2TextTokenizer"}
    if tgt_lang:
        tok_cfg["tgt_lang"] = tgt_lang
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg))
    return out


def write_data_files(out: Path, sp_proto: bytes, vocab: list[str], transforms: list[str],
                     gcmvn: tuple[np.ndarray, np.ndarray] | None = None, src: tuple[bytes, list[str]] | None = None,
                     name: str = "config.yaml") -> None:
    """fairseq's data config with its dictionary, SentencePiece model and gcmvn.npz."""
    (out / "spm.model").write_bytes(sp_proto)
    (out / "dict.txt").write_text("".join(f"{p} 1\n" for p in vocab[4:]), encoding="utf-8")
    data = {"input_feat_per_channel": 80, "input_channels": 1, "vocab_filename": "dict.txt",
            "bpe_tokenizer": {"bpe": "sentencepiece", "sentencepiece_model": "spm.model"},
            "transforms": {"*": transforms, "_train": transforms + ["specaugment"]}}
    if gcmvn is not None:
        np.savez(out / "gcmvn.npz", mean=gcmvn[0], std=gcmvn[1])
        data["global_cmvn"] = {"stats_npz_path": "/nonexistent/original/path/gcmvn.npz"}
    if src is not None:
        (out / "spm_src.model").write_bytes(src[0])
        (out / "dict_src.txt").write_text("".join(f"{p} 1\n" for p in src[1][4:]), encoding="utf-8")
        data.update(vocab_filename_src="dict_src.txt",
                    bpe_tokenizer_src={"bpe": "sentencepiece", "sentencepiece_model": "spm_src.model"})
    import yaml

    (out / name).write_text(yaml.safe_dump(data))


def fairseq_from_hf(hf: str | Path, out: str | Path) -> Path:
    """Repack an HF Speech2Text folder as fairseq's s2t_transformer checkpoint + data files (utterance CMVN)."""
    from safetensors.torch import load_file

    hf, out = Path(hf), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    c = json.loads((hf / "config.json").read_text())
    weights = load_file(str(hf / "model.safetensors"))
    renames = [("model.encoder.conv.", "encoder.subsample."), ("model.encoder.layers.", "encoder.transformer_layers."),
               ("model.encoder.layer_norm.", "encoder.layer_norm."), ("model.decoder.", "decoder.")]
    state = {}
    for k, v in weights.items():
        for old, new in renames:
            if k.startswith(old):
                state[new + k[len(old):]] = v
    state["decoder.output_projection.weight"] = weights.get("lm_head.weight", state["decoder.embed_tokens.weight"])
    state["encoder.embed_positions._float_tensor"] = torch.zeros(1)
    state["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    state["decoder.version"] = torch.tensor([3.0])
    args = argparse.Namespace(
        arch="s2t_transformer_s", task="speech_to_text", encoder_attention_heads=c["encoder_attention_heads"],
        decoder_attention_heads=c["decoder_attention_heads"],
        share_decoder_input_output_embed=c.get("tie_word_embeddings", True),
        activation_fn=c["activation_function"], max_target_positions=c["max_target_positions"],
        max_source_positions=c["max_source_positions"], no_scale_embedding=False, config_yaml="config.yaml",
        criterion="label_smoothed_cross_entropy")
    torch.save({"args": args, "model": state, "optimizer_history": [{"criterion_name": "x"}], "extra_state": {}},
               out / "checkpoint_best.pt")
    vocab = [p for p, _ in sorted(json.loads((hf / "vocab.json").read_text()).items(), key=lambda kv: kv[1])]
    write_data_files(out, (hf / "sentencepiece.bpe.model").read_bytes(), vocab, ["utterance_cmvn"])
    return out


def fbk_conformer_state(vocab: int, ctc_vocab: int, *, d: int = 16, layers: int = 2, ffn_expansion: int = 2,
                        kernel: int = 5, decoder_layers: int = 1, decoder_ffn: int = 32, seed: int = 0) -> dict:
    """Random weights under FBK-fairseq's Conformer names (ConformerEncoder + TransformerDecoderScriptable)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    def ln(prefix):
        return {prefix + ".weight": 1 + r(d, scale=0.1), prefix + ".bias": r(d, scale=0.1)}

    def lin(prefix, n_out, n_in, bias=True):
        out = {prefix + ".weight": r(n_out, n_in, scale=n_in ** -0.5)}
        if bias:
            out[prefix + ".bias"] = r(n_out, scale=0.1)
        return out

    s: dict[str, torch.Tensor] = {}
    s.update({"encoder.subsample.conv_layers.0.weight": r(2 * d, 80, 5, scale=0.05),
              "encoder.subsample.conv_layers.0.bias": r(2 * d, scale=0.1),
              "encoder.subsample.conv_layers.1.weight": r(2 * d, d, 5, scale=0.1),
              "encoder.subsample.conv_layers.1.bias": r(2 * d, scale=0.1)})
    for i in range(layers):
        p = f"encoder.conformer_layers.{i}."
        for ff in ("first_feed_forward", "second_feed_forward"):
            s.update(ln(p + ff + ".layernorm"))
            s.update(lin(p + ff + ".first_linear", d * ffn_expansion, d))
            s.update(lin(p + ff + ".second_linear", d, d * ffn_expansion))
        s.update(ln(p + "attention.layer_norm"))
        a = p + "attention.attention."
        for name in ("query_proj", "key_proj", "value_proj", "out_proj"):
            s.update(lin(a + name, d, d))
        s.update(lin(a + "pos_proj", d, d, bias=False))
        s[a + "u_bias"], s[a + "v_bias"] = r(2, d // 2), r(2, d // 2)
        s[p + "attention.positional_encoding.pe"] = torch.zeros(1, 10, d)  # a buffer FBK saves; recomputed
        c = p + "conv_module."
        s.update(ln(c + "layernorm"))
        s.update(lin(c + "first_pointwise_conv1d", 2 * d, d))
        s[c + "first_pointwise_conv1d.weight"] = s[c + "first_pointwise_conv1d.weight"].unsqueeze(-1)
        s[c + "depthwise_conv1d.weight"] = r(d, 1, kernel)
        s.update({c + "batchnorm.weight": 1 + r(d, scale=0.1), c + "batchnorm.bias": r(d, scale=0.1),
                  c + "batchnorm.running_mean": r(d, scale=0.1), c + "batchnorm.running_var": 1 + r(d, scale=0.1).abs(),
                  c + "batchnorm.num_batches_tracked": torch.tensor(100)})
        s.update(lin(c + "second_pointwise_conv1d", d, d))
        s[c + "second_pointwise_conv1d.weight"] = s[c + "second_pointwise_conv1d.weight"].unsqueeze(-1)
        s.update(ln(p + "layernorm"))
    s.update(lin("encoder.ctc_fc", ctc_vocab, d))
    s["decoder.embed_tokens.weight"] = r(vocab, d, scale=0.5)
    s["decoder.embed_positions._float_tensor"] = torch.zeros(1)
    for i in range(decoder_layers):
        p = f"decoder.layers.{i}."
        for att in ("self_attn", "encoder_attn"):
            for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
                s.update(lin(f"{p}{att}.{name}", d, d))
            s.update(ln(f"{p}{att}_layer_norm"))
        s.update(lin(p + "fc1", decoder_ffn, d))
        s.update(lin(p + "fc2", d, decoder_ffn))
        s.update(ln(p + "final_layer_norm"))
    s.update(ln("decoder.layer_norm"))
    s["decoder.output_projection.weight"] = r(vocab, d, scale=0.5)  # not shared, as in FBK's checkpoints
    s["decoder.output_projection.weight"][2] *= 0.3  # </s> rarely wins: random greedy decoding writes some words
    return s


def fbk_conformer_folder(out: str | Path, *, ctc_compress: str = "avg", ctc_layer: int = 1, cmvn: str = "global",
                         seed: int = 0, **sizes) -> Path:
    """A random FBK Conformer checkpoint folder: checkpoint.pt, config_simul.yaml, gcmvn.npz, spm + dict files."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    proto = tiny_spm(44, "word")
    vocab = dictionary(proto)
    src_proto = tiny_spm(30)
    src_vocab = dictionary(src_proto)
    state = fbk_conformer_state(len(vocab), len(src_vocab) + 1, seed=seed, **sizes)  # + <ctc_blank>
    args = argparse.Namespace(
        arch="conformer", task="speech_to_text_ctc", criterion="ctc_multi_loss", encoder_attention_heads=2,
        decoder_attention_heads=2, ctc_encoder_layer=ctc_layer, ctc_compress_strategy=ctc_compress,
        ctc_compress_max_out_size=-1, ctc_compress_fixed_ratio=4, conformer_half_step_residual=True,
        share_decoder_input_output_embed=False, no_scale_embedding=False, activation_fn="relu",
        max_target_positions=256, batch_unsafe_relative_shift=False, config_yaml="config_simul.yaml")
    torch.save({"args": args, "model": state, "extra_state": {"epoch": 3}}, out / "checkpoint_avg7.pt")
    rng = np.random.default_rng(seed)
    stats = (rng.normal(10, 2, 80).astype(np.float32), rng.uniform(2, 4, 80).astype(np.float32))
    write_data_files(out, proto, vocab, [f"{cmvn}_cmvn"], stats, (src_proto, src_vocab), name="config_simul.yaml")
    return out
