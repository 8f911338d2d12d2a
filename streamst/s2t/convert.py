"""`streamst convert` for S2T models, and what `streamst models` shows of an S2T folder or file."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from streamst.s2t import detect, load_bundle


def convert(src: str | Path, out: str | Path, *, tgt_lang: str | None = None, task: str | None = None,
            src_lang: str | None = None, dtype: torch.dtype = torch.float32) -> dict:
    """Write the streamst checkpoint of a foreign S2T model; returns the dict (checked by building the model)."""
    from streamst.s2t.streaming import S2TStreamingModel

    bundle = load_bundle(src, tgt_lang=tgt_lang)
    if task:
        if task not in ("asr", "st"):
            raise ValueError(f"--task must be asr or st, not {task!r}")
        bundle.task = task
    if src_lang:
        bundle.src_lang = src_lang
    S2TStreamingModel(bundle)  # refuses a multilingual model without a target language, before writing
    obj = bundle.to_checkpoint(dtype)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(out)
    return obj


def run_convert(args: argparse.Namespace) -> int:
    """The S2T branch of `streamst convert`."""
    obj = convert(args.src, args.out, tgt_lang=getattr(args, "tgt_lang", None), task=getattr(args, "task", None),
                  dtype=torch.float32 if getattr(args, "float32", False) else torch.float16)
    print(f"wrote {args.out}: {summary(obj)}")
    return 0


def summary(obj: dict) -> str:
    """One line: architecture, sizes, languages."""
    c = obj["config"]
    ctc = ""
    if c["ctc_layer"]:
        ctc = f", CTC after layer {c['ctc_layer']}"
        ctc += f" ({c['ctc_compress']} compression)" if c["ctc_compress"] != "none" else ""
    langs = obj["src_lang"] if obj["task"] == "asr" else f"{obj['src_lang']}-{obj['tgt_lang'] or '?'}"
    return (f"{obj.get('meta', {}).get('format', 's2t')}: {c['encoder']} encoder {c['encoder_layers']} layers{ctc}, "
            f"decoder {c['decoder_layers']} layers, d={c['d_model']}, vocabulary {c['vocab_size']}, "
            f"{obj['cmvn']['kind']} CMVN, {obj['task']} {langs}")


def describe(path: str | Path) -> dict | None:
    """`streamst models` fields for an S2T folder or fairseq file (None when `path` holds no S2T model)."""
    kind = detect(path)
    if kind is None:
        return None
    if kind == "huggingface":
        from streamst.s2t.bundle import languages_from_name

        cfg = json.loads((Path(path) / "config.json").read_text())
        task, src, tgt = languages_from_name(Path(path).name) or ("st", "en", "?")
        what = f"HF Speech2Text {cfg.get('encoder_layers')}+{cfg.get('decoder_layers')} layers, d={cfg.get('d_model')}"
    else:
        bundle = load_bundle(path)
        task, src, tgt = bundle.task, bundle.src_lang, bundle.tgt_lang or "?"
        what = summary(bundle.to_checkpoint())
    return {"task": task, "languages": src if task == "asr" else f"{src}-{tgt}", "format": what}
