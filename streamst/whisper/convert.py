"""`streamst convert SRC --out FILE.pt`: any Whisper checkpoint -> one self-contained streamst checkpoint.

The file is a plain dict of tensors, numbers and strings (loads with `torch.load(..., weights_only=True)`):
{"format": "streamst-checkpoint", "version": 1, "kind": "whisper", "config", "state_dict", "tokenizer",
"alignment_heads", "suppress_ids", "suppress_ids_begin", "source"}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from streamst.whisper.load import LoadedWhisper, load_whisper
from streamst.whisper.model import WhisperConfig
from streamst.whisper.tokenizer import WhisperTokenizer

FORMAT, VERSION, KIND = "streamst-checkpoint", 1, "whisper"


def checkpoint_dict(loaded: LoadedWhisper, dtype: torch.dtype = torch.float16) -> dict:
    """The streamst checkpoint of a loaded Whisper (weights stored as `dtype`; float16 halves the file)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": KIND,
        "config": loaded.config.to_dict(),
        "state_dict": {k: v.to(dtype).contiguous() for k, v in loaded.state_dict.items()},
        "tokenizer": loaded.tokenizer.to_json(),
        "alignment_heads": [list(h) for h in loaded.alignment_heads],
        "suppress_ids": list(loaded.suppress_ids),
        "suppress_ids_begin": list(loaded.suppress_ids_begin),
        "source": loaded.source,
    }


def loaded_from_checkpoint(obj: dict) -> LoadedWhisper:
    """Inverse of `checkpoint_dict`: check the header, rebuild config, float32 weights and tokenizer."""
    if obj.get("format") != FORMAT or obj.get("kind") != KIND:
        raise ValueError("not a streamst Whisper checkpoint (format/kind mismatch)")
    if int(obj.get("version", 0)) > VERSION:
        raise ValueError(f"streamst Whisper checkpoint version {obj['version']} is newer than this streamst ({VERSION})")
    return LoadedWhisper(
        config=WhisperConfig(**obj["config"]),
        state_dict={k: v.float() for k, v in obj["state_dict"].items()},
        tokenizer=WhisperTokenizer.from_json(obj["tokenizer"]),
        alignment_heads=[tuple(h) for h in obj["alignment_heads"]],
        suppress_ids=list(obj.get("suppress_ids", [])),
        suppress_ids_begin=list(obj.get("suppress_ids_begin", [])),
        source=obj.get("source", ""),
    )


def load_whisper_checkpoint(obj: dict, **options):
    """A `WhisperStreamingModel` from a loaded streamst checkpoint dict (options go to the model)."""
    from streamst.whisper.streaming import WhisperStreamingModel

    return WhisperStreamingModel(loaded_from_checkpoint(obj), **options)


def convert(src: str | Path, out: str | Path, *, tokenizer: str | Path | None = None,
            alignment_heads: list[tuple[int, int]] | None = None, dtype: torch.dtype = torch.float16) -> dict:
    """Load `src` in any supported format and write the streamst checkpoint to `out`; returns the dict."""
    loaded = load_whisper(src, tokenizer)
    if alignment_heads:
        loaded.alignment_heads = list(alignment_heads)
    obj = checkpoint_dict(loaded, dtype)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, out)
    return obj


def parse_heads(text: str) -> list[tuple[int, int]]:
    """'1:0,2:5' -> [(1, 0), (2, 5)]; 'layer=3' is not a head list: use the model's attention option instead."""
    try:
        return [tuple(int(x) for x in pair.split(":")) for pair in text.split(",") if pair]  # type: ignore[misc]
    except ValueError:
        raise ValueError(f"--alignment-heads takes LAYER:HEAD pairs joined by commas, not {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="Whisper (OpenAI .pt file, Hugging Face or CTranslate2 directory), or an S2T "
                        "model (Hugging Face Speech2Text folder, fairseq/FBK checkpoint or its folder)")
    parser.add_argument("--out", required=True, help="streamst checkpoint to write (.pt)")
    parser.add_argument("--tokenizer", help="tokenizer.json or vocabulary.txt (OpenAI .pt files carry none)")
    parser.add_argument("--alignment-heads", help="override alignment heads, e.g. 2:0,3:1")
    parser.add_argument("--float32", action="store_true", help="store float32 weights (default float16)")
    parser.add_argument("--tgt-lang", help="S2T: target language forced as <lang:xx> (multilingual models)")
    parser.add_argument("--task", choices=["asr", "st"], help="S2T: the model's task when its name does not say")


def run(args: argparse.Namespace) -> int:
    from streamst.s2t import detect

    if detect(args.src) is not None:
        from streamst.s2t.convert import run_convert

        return run_convert(args)
    heads = parse_heads(args.alignment_heads) if args.alignment_heads else None
    obj = convert(args.src, args.out, tokenizer=args.tokenizer, alignment_heads=heads,
                  dtype=torch.float32 if args.float32 else torch.float16)
    cfg = obj["config"]
    print(f"wrote {args.out}: Whisper {cfg['n_audio_layer']}+{cfg['n_text_layer']} layers, d={cfg['n_text_state']}, "
          f"{cfg['n_mels']} mels, vocabulary {cfg['n_vocab']}, {len(obj['alignment_heads'])} alignment heads")
    return 0
