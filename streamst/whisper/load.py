"""Read Whisper weights from OpenAI `.pt` files, Hugging Face directories and CTranslate2 directories.

Every loader returns a `LoadedWhisper`: config, a state dict in OpenAI naming, the tokenizer, alignment heads
and the suppressed token ids, which is all `convert` and `WhisperStreamingModel` need.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamst.whisper.model import WhisperConfig, sinusoids
from streamst.whisper.tokenizer import WhisperTokenizer

# Known alignment heads as (decoder layer, head), from the CTranslate2 conversion of the same model.
KNOWN_ALIGNMENT_HEADS = {
    # tiny.en: 4 layers x 6 heads, d=384, English-only vocabulary
    (4, 384, 51864): [(1, 0), (2, 0), (2, 5), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)],
}


@dataclass
class LoadedWhisper:
    config: WhisperConfig
    state_dict: dict[str, Tensor]
    tokenizer: WhisperTokenizer
    alignment_heads: list[tuple[int, int]]
    suppress_ids: list[int] = field(default_factory=list)
    suppress_ids_begin: list[int] = field(default_factory=list)
    source: str = ""


def default_alignment_heads(cfg: WhisperConfig) -> list[tuple[int, int]]:
    """Known heads for this shape of model, else all heads of the upper half of the decoder (OpenAI's default)."""
    known = KNOWN_ALIGNMENT_HEADS.get((cfg.n_text_layer, cfg.n_text_state, cfg.n_vocab))
    if known:
        return list(known)
    return [(layer, head) for layer in range(cfg.n_text_layer // 2, cfg.n_text_layer) for head in range(cfg.n_text_head)]


def load_whisper(path: str | Path, tokenizer_path: str | Path | None = None) -> LoadedWhisper:
    """Load any supported format, chosen by what the path holds."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no Whisper model at {path}")
    if path.is_dir():
        if (path / "model.bin").exists():
            return load_ctranslate2(path)
        if (path / "config.json").exists():
            return load_huggingface(path)
        raise ValueError(f"{path}: not a CTranslate2 (model.bin) or Hugging Face (config.json) Whisper directory")
    return load_openai(path, tokenizer_path)


# ---------------------------------------------------------------- tokenizer files


def read_tokenizer(directory: Path, vocab_size: int) -> WhisperTokenizer:
    """tokenizer.json (preferred: it can encode) or vocabulary.txt from a model directory."""
    tok_json = directory / "tokenizer.json"
    vocab_txt = directory / "vocabulary.txt"
    json_text = tok_json.read_text(encoding="utf-8") if tok_json.exists() else None
    if vocab_txt.exists():
        return WhisperTokenizer.from_vocabulary_txt(vocab_txt.read_text(encoding="utf-8"), json_text)
    if json_text is not None:
        return WhisperTokenizer.from_tokenizer_json(json_text, vocab_size)
    raise ValueError(f"{directory}: no tokenizer.json or vocabulary.txt beside the model")


def symbol_suppress_ids(tokenizer: WhisperTokenizer) -> list[int]:
    """Ids of stand-alone punctuation and music symbols that Whisper suppresses (its `suppress_tokens="-1"`)."""
    symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』')
    symbols += "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
    miscellaneous = set("♩♪♫♬♭♮♯")
    ids = {tokenizer.encode(" -")[0], tokenizer.encode(" '")[0]}
    for symbol in symbols + sorted(miscellaneous):
        for variant in (symbol, " " + symbol):
            toks = tokenizer.encode(variant)
            if len(toks) == 1 or (symbol in miscellaneous and toks):
                ids.add(toks[0])
    return sorted(ids)


# ---------------------------------------------------------------- OpenAI


def load_openai(path: Path, tokenizer_path: str | Path | None = None) -> LoadedWhisper:
    """OpenAI's `.pt`: {"dims": ..., "model_state_dict": ...}; the tokenizer comes from a file given or beside it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{path}: not an OpenAI Whisper checkpoint (no 'dims' / 'model_state_dict')")
    cfg = WhisperConfig(**ckpt["dims"])
    state = {k: v.float() for k, v in ckpt["model_state_dict"].items()}
    state.setdefault("encoder.positional_embedding", sinusoids(cfg.n_audio_ctx, cfg.n_audio_state))
    tok_file = Path(tokenizer_path) if tokenizer_path else None
    if tok_file is None:
        for name in ("tokenizer.json", "vocabulary.txt"):
            if (path.parent / name).exists():
                tok_file = path.parent / name
                break
    if tok_file is None:
        raise ValueError(f"{path}: OpenAI checkpoints carry no tokenizer: pass --tokenizer tokenizer.json or vocabulary.txt")
    text = tok_file.read_text(encoding="utf-8")
    if tok_file.suffix == ".json":
        tokenizer = WhisperTokenizer.from_tokenizer_json(text, cfg.n_vocab)
    else:
        tokenizer = WhisperTokenizer.from_vocabulary_txt(text)
    heads = ckpt.get("alignment_heads")
    if isinstance(heads, Tensor):  # OpenAI stores them as a [layers, heads] bool mask when present
        heads = [tuple(int(v) for v in ij) for ij in heads.nonzero().tolist()]
    return LoadedWhisper(
        cfg, state, tokenizer, list(heads) if heads else default_alignment_heads(cfg),
        suppress_ids=symbol_suppress_ids(tokenizer) if tokenizer._hf is not None else [],
        suppress_ids_begin=[tokenizer.encode(" ")[0], tokenizer.eot] if tokenizer._hf is not None else [tokenizer.eot],
        source=str(path),
    )


# ---------------------------------------------------------------- Hugging Face

_HF_BLOCK = {
    "self_attn.q_proj": "attn.query", "self_attn.k_proj": "attn.key", "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out", "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query", "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value", "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln", "fc1": "mlp.0", "fc2": "mlp.2", "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    "encoder.conv1": "encoder.conv1", "encoder.conv2": "encoder.conv2",
    "encoder.embed_positions": "encoder.positional_embedding", "encoder.layer_norm": "encoder.ln_post",
    "decoder.embed_tokens": "decoder.token_embedding", "decoder.embed_positions": "decoder.positional_embedding",
    "decoder.layer_norm": "decoder.ln",
}


def hf_name_to_openai(name: str) -> str | None:
    """`model.encoder.layers.0.fc1.weight` -> `encoder.blocks.0.mlp.0.weight`; None for names we do not use."""
    if name.startswith("model."):
        name = name[len("model."):]
    if name.startswith("proj_out"):
        return None  # tied to the token embedding
    stem, _, leaf = name.rpartition(".")
    for hf, ours in _HF_TOP.items():
        if stem == hf:
            if ours.endswith("positional_embedding"):
                return ours
            return f"{ours}.{leaf}"
    parts = stem.split(".")
    if len(parts) >= 3 and parts[1] == "layers":
        inner = ".".join(parts[3:])
        if inner in _HF_BLOCK:
            return f"{parts[0]}.blocks.{parts[2]}.{_HF_BLOCK[inner]}.{leaf}"
    return None


def load_huggingface(directory: Path) -> LoadedWhisper:
    """A transformers Whisper directory: config.json + model.safetensors or pytorch_model.bin (+ tokenizer.json)."""
    hf_cfg = json.loads((directory / "config.json").read_text())
    if hf_cfg.get("model_type") not in (None, "whisper"):
        raise ValueError(f"{directory}: config.json describes a {hf_cfg.get('model_type')!r} model, not Whisper")
    cfg = WhisperConfig(
        n_mels=hf_cfg["num_mel_bins"], n_audio_ctx=hf_cfg["max_source_positions"], n_audio_state=hf_cfg["d_model"],
        n_audio_head=hf_cfg["encoder_attention_heads"], n_audio_layer=hf_cfg["encoder_layers"],
        n_vocab=hf_cfg["vocab_size"], n_text_ctx=hf_cfg["max_target_positions"], n_text_state=hf_cfg["d_model"],
        n_text_head=hf_cfg["decoder_attention_heads"], n_text_layer=hf_cfg["decoder_layers"],
    )
    if (directory / "model.safetensors").exists():
        from safetensors.torch import load_file

        raw = load_file(str(directory / "model.safetensors"))
    elif (directory / "pytorch_model.bin").exists():
        raw = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ValueError(f"{directory}: no model.safetensors or pytorch_model.bin")
    state = {}
    for name, tensor in raw.items():
        ours = hf_name_to_openai(name)
        if ours is not None:
            state[ours] = tensor.float()
    gen_path = directory / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.exists() else {}
    tokenizer = read_tokenizer(directory, cfg.n_vocab)
    heads = [tuple(h) for h in gen.get("alignment_heads", [])] or default_alignment_heads(cfg)
    suppress = gen.get("suppress_tokens") or (symbol_suppress_ids(tokenizer) if tokenizer._hf is not None else [])
    return LoadedWhisper(
        cfg, state, tokenizer, heads, suppress_ids=list(suppress),
        suppress_ids_begin=list(gen.get("begin_suppress_tokens") or [tokenizer.eot]), source=str(directory),
    )


# ---------------------------------------------------------------- CTranslate2

# Type ids in the order of CTranslate2's DataType enum.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def read_ctranslate2_variables(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """Parse a CTranslate2 model.bin: (spec name, {variable name: array}), aliases resolved.

    Layout (little-endian): u32 binary version, string spec name, u32 spec revision, u32 count, then per
    variable: string name, u8 rank, u32 dims, u8 type id, u32 byte count, raw bytes; then u32 alias count and
    (alias, target) string pairs. Strings are u16 length (including a trailing NUL) + UTF-8 bytes.
    """
    data = memoryview(path.read_bytes())
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal pos
        n = take("H")
        text = bytes(data[pos: pos + n - 1]).decode("utf-8")
        pos += n
        return text

    version = take("I")
    if version < 5 or version > 6:
        raise ValueError(f"{path}: unsupported CTranslate2 binary version {version}")
    spec = string()
    take("I")  # spec revision
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = string()
        rank = take("B")
        shape = [take("I") for _ in range(rank)]
        type_id = take("B")
        nbytes = take("I")
        raw = bytes(data[pos: pos + nbytes])
        pos += nbytes
        dtype = _CT2_DTYPES.get(type_id)
        if dtype is None:
            raise ValueError(f"{path}: variable {name} has unknown type id {type_id}")
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            array = bits.view(np.float32)
        else:
            array = np.frombuffer(raw, dtype=dtype)
        variables[name] = array.reshape(shape)
    for _ in range(take("I")):
        alias, target = string(), string()
        variables[alias] = variables[target]
    return spec, variables


def _dequantize(variables: dict[str, np.ndarray], name: str) -> Tensor:
    """Float tensor of a variable; int8/int16 weights are divided by their `_scale` (per row for int8)."""
    array = variables[name]
    if array.dtype in (np.int8, np.int16):
        scale = variables[name + "_scale"].astype(np.float32)
        values = array.astype(np.float32)
        array = values / (scale[:, None] if scale.ndim == 1 else scale)
    return torch.from_numpy(np.array(array, dtype=np.float32))


def _ct2_state_dict(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, Tensor]:
    """Rename CTranslate2's WhisperSpec variables to OpenAI names, splitting fused QKV / KV projections."""
    state: dict[str, Tensor] = {}

    def linear(ct2: str, ours: str) -> None:
        state[f"{ours}.weight"] = _dequantize(v, f"{ct2}/weight")
        if f"{ct2}/bias" in v:
            state[f"{ours}.bias"] = _dequantize(v, f"{ct2}/bias")

    def norm(ct2: str, ours: str) -> None:
        state[f"{ours}.weight"] = _dequantize(v, f"{ct2}/gamma")
        state[f"{ours}.bias"] = _dequantize(v, f"{ct2}/beta")

    def fused(ct2: str, ours: list[str]) -> None:
        """Split a fused projection; the key part's bias is all zeros (Whisper's key has no bias)."""
        w = _dequantize(v, f"{ct2}/weight").chunk(len(ours))
        b = _dequantize(v, f"{ct2}/bias").chunk(len(ours))
        for name, wi, bi in zip(ours, w, b):
            state[f"{name}.weight"] = wi.contiguous()
            if not name.endswith(".key"):
                state[f"{name}.bias"] = bi.contiguous()

    def ffn(ct2: str, ours: str) -> None:
        norm(f"{ct2}/layer_norm", f"{ours}.mlp_ln")
        linear(f"{ct2}/linear_0", f"{ours}.mlp.0")
        linear(f"{ct2}/linear_1", f"{ours}.mlp.2")

    linear("encoder/conv1", "encoder.conv1")
    linear("encoder/conv2", "encoder.conv2")
    state["encoder.positional_embedding"] = _dequantize(v, "encoder/position_encodings/encodings")
    norm("encoder/layer_norm", "encoder.ln_post")
    for i in range(n_enc):
        ct2, ours = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        norm(f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
        fused(f"{ct2}/self_attention/linear_0", [f"{ours}.attn.query", f"{ours}.attn.key", f"{ours}.attn.value"])
        linear(f"{ct2}/self_attention/linear_1", f"{ours}.attn.out")
        ffn(f"{ct2}/ffn", ours)
    state["decoder.token_embedding.weight"] = _dequantize(v, "decoder/embeddings/weight")
    state["decoder.positional_embedding"] = _dequantize(v, "decoder/position_encodings/encodings")
    norm("decoder/layer_norm", "decoder.ln")
    for i in range(n_dec):
        ct2, ours = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        norm(f"{ct2}/self_attention/layer_norm", f"{ours}.attn_ln")
        fused(f"{ct2}/self_attention/linear_0", [f"{ours}.attn.query", f"{ours}.attn.key", f"{ours}.attn.value"])
        linear(f"{ct2}/self_attention/linear_1", f"{ours}.attn.out")
        norm(f"{ct2}/attention/layer_norm", f"{ours}.cross_attn_ln")
        linear(f"{ct2}/attention/linear_0", f"{ours}.cross_attn.query")
        fused(f"{ct2}/attention/linear_1", [f"{ours}.cross_attn.key", f"{ours}.cross_attn.value"])
        linear(f"{ct2}/attention/linear_2", f"{ours}.cross_attn.out")
        ffn(f"{ct2}/ffn", ours)
    return state


def load_ctranslate2(directory: Path) -> LoadedWhisper:
    """A CTranslate2 Whisper directory: model.bin + config.json + vocabulary.txt and/or tokenizer.json."""
    spec, v = read_ctranslate2_variables(directory / "model.bin")
    if spec != "WhisperSpec":
        raise ValueError(f"{directory}: CTranslate2 model is a {spec}, not a WhisperSpec")
    n_enc = sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight"))
    n_dec = sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight"))
    conv1 = v["encoder/conv1/weight"].shape
    emb = v["decoder/embeddings/weight"].shape
    cfg = WhisperConfig(
        n_mels=conv1[1], n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0], n_audio_state=conv1[0],
        n_audio_head=int(v["encoder/num_heads"]), n_audio_layer=n_enc, n_vocab=emb[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0], n_text_state=emb[1],
        n_text_head=int(v["decoder/num_heads"]), n_text_layer=n_dec,
    )
    ct2_cfg_path = directory / "config.json"
    ct2_cfg = json.loads(ct2_cfg_path.read_text()) if ct2_cfg_path.exists() else {}
    tokenizer = read_tokenizer(directory, cfg.n_vocab)
    heads = [tuple(h) for h in ct2_cfg.get("alignment_heads", [])] or default_alignment_heads(cfg)
    return LoadedWhisper(
        cfg, _ct2_state_dict(v, n_enc, n_dec), tokenizer, heads,
        suppress_ids=list(ct2_cfg.get("suppress_ids", [])),
        suppress_ids_begin=list(ct2_cfg.get("suppress_ids_begin", [tokenizer.eot])), source=str(directory),
    )
