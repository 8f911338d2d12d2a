"""Options shared by the commands that stream audio through a model, and the one rule for the default model.

Every command that needs a model and was given none (`translate`, `transcribe`, `demo`, `eval`, `sweep`, and
`serve`/`mic` through `default_model("asr")`) asks `default_model(task, languages)`: the first installed name
in that row of `DEFAULT_MODELS`. Changing a default is one edit to that table.
"""
from __future__ import annotations

import argparse
from pathlib import Path

# (task, languages) -> model names in order of preference; the first one installed is the default.
# ASR rows are keyed by the source language, translation rows by the pair. Whisper tiny.en (the `whisper`
# extra) comes first for English ASR because the shipped en-asr only knows synthetic espeak-ng voices.
DEFAULT_MODELS: dict[tuple[str, str], tuple[str, ...]] = {
    ("asr", "en"): ("whisper-tiny.en-causal", "whisper-tiny.en", "en-asr"),
    ("st", "en-de"): ("en-de", "en-de-espeak"),
    ("st", "en-es"): ("en-es",),
}
DEFAULT_LANGUAGES = {"asr": "en", "st": "en-de"}  # the row a task uses when no language pair is given


def default_model(task: str = "asr", languages: str | None = None) -> str:
    """The default model of a task and language pair (`en-de`; `en` or `en-en` for ASR): the first installed
    name of its `DEFAULT_MODELS` row, so `transcribe`, `eval`, `serve` and `mic` always agree."""
    from streamst.checkpoint import available_models

    key = (task, _languages_key(task, languages or DEFAULT_LANGUAGES[task]))
    if key not in DEFAULT_MODELS:
        known = ", ".join(sorted({lang for t, lang in DEFAULT_MODELS if t == task}))
        raise ValueError(f"no default {'recognition' if task == 'asr' else 'translation'} model for "
                         f"{key[1]!r} (defaults exist for {known}); pass --model NAME_OR_PATH")
    have = available_models()
    for name in DEFAULT_MODELS[key]:
        if name in have:
            return name
    raise ValueError(f"none of the default models for {key[1]} ({', '.join(DEFAULT_MODELS[key])}) is installed; "
                     "`streamst models` lists what is, or pass --model NAME_OR_PATH")


def default_model_help(task: str) -> str:
    """The --model help text, naming the default as the table gives it."""
    names = " or ".join(DEFAULT_MODELS[(task, DEFAULT_LANGUAGES[task])])
    return f"model name (see `streamst models`) or checkpoint file (default: {names}, the first installed)"


def _languages_key(task: str, languages: str) -> str:
    """`en-en` -> `en` for ASR (its rows are keyed by the source language)."""
    return languages.split("-")[0] if task == "asr" else languages


def model_languages(name_or_path: str) -> tuple[str, str | None, str | None]:
    """(task, source language, target language) of a model without building it; None where it does not say."""
    from streamst.checkpoint import read_checkpoint, resolve_model

    from streamst.s2t.convert import describe

    path = resolve_model(name_or_path)
    s2t = describe(path)  # a Hugging Face Speech2Text folder or a fairseq checkpoint
    if s2t is not None:
        src, _, tgt = s2t["languages"].partition("-")
        return s2t["task"], src or None, (tgt if tgt not in ("", "?") else None) if s2t["task"] == "st" else src
    if path.is_dir():  # a Whisper folder: English-only models are named *.en
        return "asr", ("en" if path.name.endswith(".en") or name_or_path.endswith(".en") else None), None
    obj = read_checkpoint(path)
    if obj.get("kind") == "whisper":
        return "asr", None, None
    task = "asr" if obj.get("task", "st") == "asr" else "st"
    src = obj.get("src_lang") or None  # an empty string says nothing either
    return task, src, ((obj.get("tgt_lang") or None) if task == "st" else src)


def check_model_languages(model: str, task: str, pair: str) -> None:
    """Refuse a model whose task or languages do not match the corpus (en-de scored against Spanish)."""
    if "-" not in pair:
        return
    src, tgt = pair.split("-", 1)
    m_task, m_src, m_tgt = model_languages(model)
    want = f"{src} speech recognition" if task == "asr" else f"{src}->{tgt} translation"
    if m_task != task:
        raise ValueError(f"model {model!r} does {'speech recognition' if m_task == 'asr' else 'translation'}, "
                         f"but --pair {pair} --task {task} needs {want}")
    if (m_src is not None and m_src != src) or (task == "st" and m_tgt is not None and m_tgt != tgt):
        have = m_src if task == "asr" else f"{m_src}-{m_tgt}"
        raise ValueError(f"model {model!r} is {have}, but --pair {pair} needs {want}; "
                         f"pass --model {default_model_or_none(task, pair) or 'NAME'} or another --pair")


def default_model_or_none(task: str, languages: str) -> str | None:
    """`default_model`, or None where there is none (for error messages)."""
    try:
        return default_model(task, languages)
    except ValueError:
        return None


def add_stream_options(parser: argparse.ArgumentParser, task: str) -> None:
    """--model, --policy, --chunk-ms, --beam, --backend, --threads."""
    parser.add_argument("--model", default=None, help=default_model_help(task))
    parser.add_argument("--policy", default="alignatt:frames=4",
                        help="read/write policy spec, e.g. waitk:k=3, la:n=2, alignatt:frames=4, "
                             "streamatt:frames=4,history_words=20, offline")
    parser.add_argument("--chunk-ms", type=float, default=320.0, help="audio chunk length in ms")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="torch, or onnx (MODEL is then a folder written by `streamst export-onnx`)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: one chunk's work is small, and more threads "
                             "thrash when anything else runs)")


def load_stream_model(name: str | None, task: str, backend: str = "torch", threads: int = 1):
    """The model to stream with: the named one, or the default one for the task."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if backend == "onnx":
        if not name:
            raise ValueError("--backend onnx needs --model DIR (a folder written by `streamst export-onnx`)")
        from streamst.onnx_backend import load_onnx_model

        return load_onnx_model(name, threads=threads)
    from streamst.checkpoint import load_model

    return load_model(name or default_model(task))


def check_audio_path(path: str | Path) -> None:
    """A clear one-line error for what is not an audio file: missing, a folder, or empty."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a folder, not an audio file")
    if not p.exists():
        raise FileNotFoundError(f"no such audio file: {p}")
    if p.stat().st_size == 0:
        raise ValueError(f"{p} is empty (0 bytes)")
