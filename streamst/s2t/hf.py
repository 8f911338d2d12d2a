"""Hugging Face `Speech2TextForConditionalGeneration` folders (e.g. facebook/s2t-small-mustc-en-de-st)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from streamst.s2t.bundle import S2TBundle, languages_from_name
from streamst.s2t.config import S2TConfig
from streamst.s2t.features import Cmvn
from streamst.s2t.tokenizer import VocabTokenizer, read_vocab_json

RENAMES = (  # HF prefix -> fairseq prefix
    ("model.encoder.conv.", "encoder.subsample."),
    ("model.encoder.layers.", "encoder.transformer_layers."),
    ("model.encoder.layer_norm.", "encoder.layer_norm."),
    ("model.decoder.", "decoder."),
)


def is_hf_speech2text(path: Path) -> bool:
    """A folder whose config.json says model_type 'speech_to_text'."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") == "speech_to_text"
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def hf_config(c: dict) -> S2TConfig:
    """Our architecture from an HF Speech2Text config.json."""
    if int(c.get("decoder_start_token_id", 2)) != int(c.get("eos_token_id", 2)):
        raise ValueError("unsupported Speech2Text config: decoding must start from </s> (decoder_start_token_id "
                         f"{c.get('decoder_start_token_id')} != eos_token_id {c.get('eos_token_id')})")
    kernels = list(c.get("conv_kernel_sizes", [5, 5]))
    if len(kernels) != int(c.get("num_conv_layers", len(kernels))):
        raise ValueError("config.json: conv_kernel_sizes and num_conv_layers disagree")
    return S2TConfig(
        vocab_size=int(c["vocab_size"]), d_model=int(c.get("d_model", 256)),
        encoder_layers=int(c.get("encoder_layers", 12)), encoder_heads=int(c.get("encoder_attention_heads", 4)),
        encoder_ffn=int(c.get("encoder_ffn_dim", 2048)), conv_kernel_sizes=kernels,
        conv_channels=int(c.get("conv_channels", 1024)),
        n_mels=int(c.get("input_feat_per_channel", 80)) * int(c.get("input_channels", 1)),
        scale_embedding=bool(c.get("scale_embedding", True)), activation=c.get("activation_function", "relu"),
        max_source_positions=int(c.get("max_source_positions", 6000)),
        decoder_layers=int(c.get("decoder_layers", 6)), decoder_heads=int(c.get("decoder_attention_heads", 4)),
        decoder_ffn=int(c.get("decoder_ffn_dim", 2048)), tied_output=bool(c.get("tie_word_embeddings", True)),
        max_target_positions=int(c.get("max_target_positions", 1024)), pad=int(c.get("pad_token_id", 1)))


def hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors or pytorch_model.bin (read without running pickled code)."""
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin")


def to_fairseq_names(hf: dict[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """HF Speech2Text parameter names -> fairseq's; positional tables (computed, not learned) dropped."""
    out = {}
    for key, value in hf.items():
        if key.endswith("embed_positions.weights"):
            continue
        if key == "lm_head.weight":
            if not tied:
                out["decoder.output_projection.weight"] = value
            continue
        for old, new in RENAMES:
            if key.startswith(old):
                out[new + key[len(old):]] = value
                break
        else:
            out[key] = value  # left for the architecture check to report
    return out


def load_hf_speech2text(folder: str | Path, tgt_lang: str | None = None) -> S2TBundle:
    """Read an HF Speech2Text folder into an S2TBundle."""
    folder = Path(folder)
    cfg = hf_config(_json(folder / "config.json"))
    for name in ("sentencepiece.bpe.model", "vocab.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: a Speech2Text folder needs {name}")
    vocab = read_vocab_json(folder / "vocab.json")
    if len(vocab) > cfg.vocab_size:
        raise ValueError(f"vocab.json has {len(vocab)} pieces but the model only {cfg.vocab_size} outputs")
    vocab += [f"<unused:{i}>" for i in range(len(vocab), cfg.vocab_size)]
    tokenizer = VocabTokenizer((folder / "sentencepiece.bpe.model").read_bytes(), vocab)
    pre = _json(folder / "preprocessor_config.json")
    if int(pre.get("sampling_rate", 16000)) != 16000:
        raise ValueError(f"unsupported sampling rate {pre['sampling_rate']} (Speech2Text models take 16 kHz)")
    if float(pre.get("dither", 0.0)) != 0.0:
        raise ValueError("unsupported feature extractor: dither must be 0 for deterministic features")
    if int(pre.get("num_mel_bins", cfg.n_mels)) != cfg.n_mels:
        raise ValueError(f"preprocessor_config.json has {pre['num_mel_bins']} mel bins, the model takes {cfg.n_mels}")
    cmvn = Cmvn("utterance" if pre.get("do_ceptral_normalize", True) else "none",
                norm_means=bool(pre.get("normalize_means", True)), norm_vars=bool(pre.get("normalize_vars", True)))
    tok_cfg = _json(folder / "tokenizer_config.json")
    guess = languages_from_name(folder.name) or ("st", "en", "")
    lang = tgt_lang or tok_cfg.get("tgt_lang") or ""
    return S2TBundle(cfg, to_fairseq_names(hf_weights(folder), cfg.tied_output), tokenizer, cmvn, task=guess[0],
                     src_lang=guess[1], tgt_lang=lang or guess[2], source=str(folder),
                     meta={"format": "huggingface speech_to_text"})
