"""fairseq S2T checkpoints (s2t_transformer, FBK's conformer) with their data config, CMVN and SentencePiece.

A model is a `checkpoint*.pt` (or any .pt fairseq wrote) plus the `config.yaml` of its data (FBK ships
`config_simul.yaml`), the dictionary and SentencePiece files it names, and `gcmvn.npz` for global CMVN. Pass
the checkpoint file or the folder holding it. Sizes come from the weights; heads, CTC and compression settings
from the pickled arguments, read by `safe_pickle` (nothing in the file runs).
"""
from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import torch
import yaml

from streamst.s2t.bundle import S2TBundle, languages_from_name
from streamst.s2t.config import S2TConfig
from streamst.s2t.features import Cmvn, load_gcmvn
from streamst.s2t.safe_pickle import SafeUnpickler, load_checkpoint, plain
from streamst.s2t.tokenizer import VocabTokenizer, read_fairseq_dict

CONFIG_NAMES = ("config_simul.yaml", "config.yaml", "config_st.yaml", "config_asr.yaml")
UNSUPPORTED_ARGS = {  # argument -> why we refuse a checkpoint that sets it
    "decoder_learned_pos": "learned decoder positions",
    "layernorm_embedding": "layer norm on the embeddings",
    "no_token_positional_embeddings": "a decoder without positions",
    "adaptive_softmax_cutoff": "adaptive softmax",
    "distance_penalty": "FBK's distance-penalty encoder attention",
}
DROPPED = re.compile(r"(^|\.)(version|_float_tensor)$|\.positional_encoding\.pe$")


def find_fairseq_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint file `path` is or holds, when it looks like fairseq's (cheap; weights not read)."""
    path = Path(path)
    if path.is_dir():
        pts = sorted(path.glob("*.pt"))
        if not pts or not any(path.glob("*.yaml")):
            return None
        best = [p for p in pts if p.name in ("checkpoint_best.pt", "checkpoint.pt")] or pts
        return best[0] if _looks_fairseq(best[0]) else None
    return path if path.is_file() and _looks_fairseq(path) else None


class _Peek(SafeUnpickler):
    """Reads the pickle's structure only: tensors come back as None."""

    def find_class(self, module: str, name: str):
        if module == "torch._utils":
            return lambda *args, **kwargs: None
        return super().find_class(module, name)


def _looks_fairseq(path: Path) -> bool:
    """A torch zip whose pickle is a dict with fairseq's keys: 'model' and 'args' or 'cfg' (tensors not read)."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return False
            unpickler = _Peek(io.BytesIO(z.read(name)))
            unpickler.persistent_load = lambda pid: None
            top = unpickler.load()
    except Exception:  # anything unreadable is simply not a fairseq checkpoint
        return False
    return isinstance(top, dict) and "model" in top and ("args" in top or "cfg" in top)


def checkpoint_args(obj: dict) -> dict:
    """The training arguments as one flat dict (old `args` Namespace, or `cfg` with task/criterion/model)."""
    args = plain(obj.get("args")) or {}
    cfg = plain(obj.get("cfg")) or {}
    for section in ("task", "criterion", "model"):
        sub = cfg.get(section)
        if isinstance(sub, dict):
            if section != "model" and "_name" in sub:
                args.setdefault(section, sub["_name"])
            args.update({k: v for k, v in sub.items() if k != "_name"})
            if section == "model" and "_name" in sub:
                args.setdefault("arch", sub["_name"])
    if not args:
        raise ValueError("the checkpoint holds neither 'args' nor 'cfg': not a fairseq training checkpoint")
    return args


def _layers(state: dict, prefix: str) -> int:
    ids = {int(m.group(1)) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(ids) + 1 if ids else 0


def architecture(args: dict, state: dict) -> S2TConfig:
    """Our config from the weights' shapes and the arguments; ValueError naming anything unsupported."""
    arch = args.get("arch", "?")
    for key, what in UNSUPPORTED_ARGS.items():
        if args.get(key):
            raise ValueError(f"unsupported fairseq model ({arch}): {what} ({key}) is not implemented")
    if _layers(state, "encoder.conformer_layers."):
        encoder, prefix = "conformer", "encoder.conformer_layers."
    elif _layers(state, "encoder.transformer_layers."):
        encoder, prefix = "transformer", "encoder.transformer_layers."
    else:
        raise ValueError(f"unsupported fairseq model {arch!r}: streamst loads s2t_transformer and FBK conformer "
                         "encoders (encoder.transformer_layers.* or encoder.conformer_layers.* weights)")
    if "decoder.embed_tokens.weight" not in state:
        raise ValueError(f"unsupported fairseq model {arch!r}: no Transformer decoder (decoder.embed_tokens)")
    vocab, d = state["decoder.embed_tokens.weight"].shape
    convs = _layers(state, "encoder.subsample.conv_layers.")
    conv_w = [state[f"encoder.subsample.conv_layers.{i}.weight"] for i in range(convs)]
    if not conv_w or conv_w[-1].shape[0] != 2 * d:
        raise ValueError("unsupported fairseq model: the encoder and decoder widths differ or there is no "
                         "Conv1dSubsampler")
    for key in ("encoder_attention_heads", "decoder_attention_heads"):
        if key not in args:
            raise ValueError(f"the checkpoint's arguments lack {key}")
    out = state.get("decoder.output_projection.weight")
    tied = (out is None or bool(args.get("share_decoder_input_output_embed"))
            or torch.equal(out, state["decoder.embed_tokens.weight"]))
    ctc = "encoder.ctc_fc.weight" in state
    cfg = dict(
        vocab_size=vocab, d_model=d, encoder=encoder, encoder_layers=_layers(state, prefix),
        encoder_heads=int(args["encoder_attention_heads"]), conv_kernel_sizes=[w.shape[2] for w in conv_w],
        conv_channels=conv_w[0].shape[0] if convs > 1 else 2 * d, n_mels=conv_w[0].shape[1],
        scale_embedding=not args.get("no_scale_embedding", False), activation=args.get("activation_fn", "relu"),
        max_source_positions=int(args.get("max_source_positions", 6000)),
        decoder_layers=_layers(state, "decoder.layers."), decoder_heads=int(args["decoder_attention_heads"]),
        decoder_ffn=state["decoder.layers.0.fc1.weight"].shape[0],
        decoder_normalize_before="decoder.layer_norm.weight" in state, tied_output=tied,
        max_target_positions=int(args.get("max_target_positions", 1024)),
    )
    if encoder == "transformer":
        cfg.update(encoder_ffn=state[prefix + "0.fc1.weight"].shape[0],
                   encoder_normalize_before="encoder.layer_norm.weight" in state)
    else:
        cfg.update(conformer_kernel=state[prefix + "0.conv_module.depthwise_conv1d.weight"].shape[2],
                   conformer_ff_expansion=state[prefix + "0.first_feed_forward.first_linear.weight"].shape[0] // d,
                   conformer_half_step=bool(args.get("conformer_half_step_residual", True)))
    if ctc:
        if "ctc_encoder_layer" not in args:
            raise ValueError("the checkpoint has a CTC head but its arguments lack ctc_encoder_layer")
        cfg.update(ctc_layer=int(args["ctc_encoder_layer"]), ctc_vocab=state["encoder.ctc_fc.weight"].shape[0],
                   ctc_compress=args.get("ctc_compress_strategy", "none") or "none",
                   ctc_compress_fixed_ratio=int(args.get("ctc_compress_fixed_ratio", 4)),
                   ctc_compress_max_out=int(args.get("ctc_compress_max_out_size", -1)))
    elif (args.get("ctc_compress_strategy") or "none") != "none":
        raise ValueError("the checkpoint asks for CTC compression but has no CTC head (encoder.ctc_fc)")
    return S2TConfig(**cfg)


def _resolve(folder: Path, name: str, what: str) -> Path:
    """A file the data config names: as given, else in the checkpoint's folder (by its base name)."""
    for p in (Path(name), folder / name, folder / Path(name).name):
        if p.is_file():
            return p
    raise FileNotFoundError(f"{what} {name!r} not found (looked next to the checkpoint in {folder})")


def data_config(folder: Path, args: dict) -> tuple[Path, dict]:
    """The data config (the one the arguments name, else config_simul.yaml / config.yaml ...) and its values."""
    names = [Path(args["config_yaml"]).name] if args.get("config_yaml") else []
    for name in names + list(CONFIG_NAMES) + sorted(p.name for p in folder.glob("*.yaml")):
        p = folder / name
        if p.is_file():
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
            if isinstance(data, dict) and "vocab_filename" in data:
                return p, data
    raise FileNotFoundError(f"no fairseq data config (a .yaml with vocab_filename) next to the checkpoint in {folder}")


def _spm(folder: Path, data: dict, key: str) -> bytes:
    bpe = data.get(key) or {}
    if bpe.get("bpe") != "sentencepiece" or not bpe.get("sentencepiece_model"):
        raise ValueError(f"unsupported {key} {bpe!r}: streamst needs a SentencePiece model")
    return _resolve(folder, bpe["sentencepiece_model"], "SentencePiece model").read_bytes()


def cmvn_from(folder: Path, data: dict) -> Cmvn:
    """The evaluation-time feature transforms ('*') of the data config as one CMVN."""
    transforms = data.get("transforms") or data.get("feature_transforms") or {}
    names = [t for t in (transforms.get("*") or []) if t != "specaugment"]
    if not names:
        return Cmvn("none")
    if len(names) > 1 or names[0] not in ("utterance_cmvn", "global_cmvn"):
        raise ValueError(f"unsupported feature transforms {names} (streamst supports utterance_cmvn or global_cmvn)")
    if names[0] == "global_cmvn":
        stats = (data.get("global_cmvn") or {}).get("stats_npz_path")
        if not stats:
            raise ValueError("global_cmvn needs global_cmvn.stats_npz_path in the data config")
        return load_gcmvn(_resolve(folder, stats, "CMVN statistics"))
    opts = data.get("utterance_cmvn") or {}
    return Cmvn("utterance_fairseq", norm_means=bool(opts.get("norm_means", True)),
                norm_vars=bool(opts.get("norm_vars", True)))


def load_fairseq(path: str | Path, *, tgt_lang: str | None = None) -> S2TBundle:
    """Read a fairseq S2T checkpoint and its data files into an S2TBundle."""
    ckpt = find_fairseq_checkpoint(path)
    if ckpt is None:
        raise ValueError(f"{path}: not a fairseq checkpoint (or a folder holding one and its config .yaml)")
    folder = ckpt.parent
    obj = load_checkpoint(ckpt)
    if not isinstance(obj.get("model"), dict):
        raise ValueError(f"{ckpt}: no 'model' weights in the checkpoint")
    args = checkpoint_args(obj)
    state = {k: v for k, v in obj["model"].items() if isinstance(v, torch.Tensor) and not DROPPED.search(k)}
    cfg = architecture(args, state)
    if cfg.tied_output:
        state.pop("decoder.output_projection.weight", None)
    cfg_path, data = data_config(folder, args)
    vocab = read_fairseq_dict(_resolve(folder, data["vocab_filename"], "dictionary"))
    if len(vocab) != cfg.vocab_size:
        raise ValueError(f"{data['vocab_filename']} gives {len(vocab)} symbols but the decoder has {cfg.vocab_size}")
    tokenizer = VocabTokenizer(_spm(folder, data, "bpe_tokenizer"), vocab)
    src_tok = None
    if cfg.ctc_layer and data.get("vocab_filename_src") and data.get("bpe_tokenizer_src"):
        src_vocab = read_fairseq_dict(_resolve(folder, data["vocab_filename_src"], "source dictionary"))
        if len(src_vocab) + 1 == cfg.ctc_vocab and "<ctc_blank>" not in src_vocab:
            src_vocab.append("<ctc_blank>")  # FBK's CTC tasks add the blank after the dictionary
        if len(src_vocab) == cfg.ctc_vocab:
            src_tok = VocabTokenizer(_spm(folder, data, "bpe_tokenizer_src"), src_vocab)
    if int(data.get("input_feat_per_channel", cfg.n_mels)) * int(data.get("input_channels", 1)) != cfg.n_mels:
        raise ValueError(f"{cfg_path.name}: input_feat_per_channel does not match the model's {cfg.n_mels} inputs")
    guess = languages_from_name(f"{folder.name} {ckpt.stem}") or ("st", "en", "")
    return S2TBundle(cfg, state, tokenizer, cmvn_from(folder, data), task=guess[0], src_lang=guess[1],
                     tgt_lang=tgt_lang or guess[2], source=str(ckpt), src_tokenizer=src_tok,
                     meta={"format": f"fairseq {args.get('arch', '?')}", "data_config": cfg_path.name})
