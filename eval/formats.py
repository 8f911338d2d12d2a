"""Read and write the log formats of SimulEval, OmniSTEval and simulstream.

* SimulEval ``instances.log`` / OmniSTEval JSONL: one JSON object per line. A missing ``reference`` key
  becomes ``""`` (SimulEval ``LogInstance``; R = 1 word), an explicit ``null`` stays ``None`` (R = len(delays)).
  OmniSTEval's re-segmented JSONL (``emission_cu``/``emission_ca``) is read as delays/elapsed.
* simulstream metric logs: replayed exactly as simulstream 1.0.0 ``LogReader.final_outputs_and_latencies``
  (deleted tokens remove trailing units; a word whose tail changes takes the latest step's delay).

Malformed lines (bad JSON, wrong field types, length mismatch between ``delays`` and ``elapsed``) are
skipped with a warning naming the file and line number; the caller gets the warnings in a list and the
CLI prints them, so a skipped line never changes a score silently. ``strict=True`` raises ValueError instead.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, TextIO

_ABSENT = object()


@dataclass
class LogRecord:
    """One hypothesis: a sentence (short-form) or a whole talk (long-form)."""

    index: int
    prediction: str
    delays: list[float] | None
    elapsed: list[float] | None
    source_length: float | None
    reference: str | None
    source: str | None = None  # audio name (long-form matching), from "source" or simulstream metadata
    line_number: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogFile:
    """Records of one log plus the warnings raised while reading it."""

    records: list[LogRecord]
    warnings: list[str]
    kind: str  # "instances" (SimulEval / OmniSTEval JSONL) or "simulstream"


def _numbers(value: Any, name: str) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{name!r} must be a list of numbers")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{name!r} holds a non-finite number")
    return value


def _source_name(value: Any) -> str | None:
    if isinstance(value, list):
        return str(value[0]) if value else None
    return None if value is None else str(value)


def _record_from_json(obj: Any, line_number: int, position: int) -> LogRecord:
    if not isinstance(obj, dict):
        raise ValueError("line is not a JSON object")
    if "delays" not in obj and "emission_cu" not in obj:
        raise ValueError("no 'delays' (or 'emission_cu'): not a SimulEval/OmniSTEval instance")
    delays = obj.get("delays", obj.get("emission_cu"))
    elapsed = obj.get("elapsed", obj.get("emission_ca"))
    delays = _numbers(delays, "delays")
    elapsed = _numbers(elapsed, "elapsed")
    if delays is not None and elapsed is not None and len(elapsed) not in (0, len(delays)):
        raise ValueError(f"'elapsed' has {len(elapsed)} values but 'delays' has {len(delays)}")
    source_length = obj.get("source_length")
    if source_length is not None and (isinstance(source_length, bool) or not isinstance(source_length, (int, float))):
        raise ValueError("'source_length' must be a number")
    prediction = obj.get("prediction", "")
    if not isinstance(prediction, str):
        raise ValueError("'prediction' must be a string")
    reference = obj.get("reference", "")
    if reference is not None and not isinstance(reference, str):
        raise ValueError("'reference' must be a string or null")
    index = obj.get("index", position)
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError("'index' must be an integer")
    known = {"index", "prediction", "delays", "elapsed", "emission_cu", "emission_ca", "source_length", "reference", "source"}
    return LogRecord(index=index, prediction=prediction, delays=delays, elapsed=elapsed,
                     source_length=source_length, reference=reference, source=_source_name(obj.get("source")),
                     line_number=line_number, extra={k: v for k, v in obj.items() if k not in known})


AUDIO_MAGIC = (b"RIFF", b"fLaC", b"OggS", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"FORM")


def check_text_log(path: str | os.PathLike) -> None:
    """A clear error for what cannot be a log: a folder, a missing file, audio, or bytes that are not UTF-8."""
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{p} is a folder; give a log file (SimulEval instances.log, OmniSTEval JSONL or "
                         "simulstream log)")
    if not p.is_file():
        raise FileNotFoundError(f"no such log file: {p}")
    with open(p, "rb") as f:
        head = f.read(4096)
    if head.startswith(AUDIO_MAGIC):
        raise ValueError(f"{p} is audio, not a log: `streamst score` reads the logs that `streamst eval` or "
                         "SimulEval write; to stream audio use `streamst translate` or `streamst eval`")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the 4,096 bytes
            raise ValueError(f"{p} is not UTF-8 text (byte {e.start}), so not a SimulEval, OmniSTEval or "
                             "simulstream log") from None


def _json_lines(path: str | os.PathLike) -> Iterable[tuple[int, str]]:
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield number, line
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}), so not a log") from None


def sniff_kind(path: str | os.PathLike) -> str:
    """"simulstream" if the first JSON lines look like a simulstream metrics log, else "instances"."""
    for _, (number, line) in zip(range(3), _json_lines(path)):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and ({"metadata", "generated_tokens", "total_audio_processed", "model_loading_time"} & obj.keys()):
            return "simulstream"
    return "instances"


def read_instances(path: str | os.PathLike, strict: bool = False) -> LogFile:
    """Read a SimulEval instances.log or OmniSTEval JSONL (short-form, long-form or re-segmented)."""
    records: list[LogRecord] = []
    warnings: list[str] = []
    for number, line in _json_lines(path):
        try:
            records.append(_record_from_json(json.loads(line), number, len(records)))
        except (json.JSONDecodeError, ValueError) as e:
            message = f"{path}:{number}: malformed line skipped ({e})"
            if strict:
                raise ValueError(message) from None
            warnings.append(message)
    return LogFile(records, warnings, "instances")


# --------------------------------------------------------------------------------------------------
# simulstream


def detokenizer_for(kind: str) -> Callable[[Sequence[str]], str]:
    """simulstream's "simuleval" detokenizers: word joins with spaces, char with "", spm on U+2581."""
    if kind == "word":
        return lambda tokens: " ".join(tokens)
    if kind == "char":
        return lambda tokens: "".join(tokens)
    if kind == "spm":
        return lambda tokens: "".join(tokens).replace("\u2581", " ").strip()
    raise ValueError(f"unknown detokenizer {kind!r} (word, char or spm)")


def text_items(text: str, unit: str) -> list[str]:
    """simulstream ``text_items``: words split on " " with empties dropped; chars are all characters."""
    if unit == "word":
        return [w for w in text.split(" ") if w != ""]
    if unit == "char":
        return list(text)
    raise ValueError(f"latency unit {unit!r} is not supported for simulstream logs (word or char)")


@dataclass
class StreamOutput:
    """Final text of one talk with ideal and computation-aware delays (seconds), as simulstream replays it."""

    name: str
    text: str
    ideal_delays: list[float]
    ca_delays: list[float]


def _replay(lines: list[dict], detok: Callable, unit: str) -> StreamOutput | None:
    tokens: list[str] = []
    text: str | None = None
    items: list[str] = []          # text_items(text, unit), kept in step with text
    words: list[str] = []          # text_items(text, "word")
    ideal: list[float] = []
    ca: list[float] = []

    def split(t: str) -> tuple[list[str], list[str]]:
        w = text_items(t, "word")
        return (w if unit == "word" else text_items(t, unit)), w

    for line in lines:
        delay = line["total_audio_processed"]
        ca_delay = line["total_audio_processed"] + line["computation_time"]
        deleted = line.get("deleted_tokens") or []
        if deleted:
            if text is None or deleted != tokens[-len(deleted):]:
                raise ValueError("deleted_tokens do not match the end of the output so far")
            tokens = tokens[: -len(deleted)]
            new_text = detok(tokens)
            new_items, new_words = split(new_text)
            removed = len(items) - len(new_items)
            if removed > 0:
                ideal, ca = ideal[:-removed], ca[:-removed]
            if unit == "word":
                last = len(new_words) - 1
                if last >= 0 and words[last] != new_words[-1]:
                    ideal[-1] = delay
                    ca[-1] = ca_delay
            text, items, words = new_text, new_items, new_words
        tokens.extend(line.get("generated_tokens") or [])
        new_text = detok(tokens)
        new_items, new_words = split(new_text)
        if text is None:
            ideal, ca = [delay] * len(new_items), [ca_delay] * len(new_items)
        else:
            added = len(new_items) - len(items)
            if added > 0:
                ideal.extend([delay] * added)
                ca.extend([ca_delay] * added)
            if unit == "word":
                last = len(words) - 1
                if last >= 0 and new_words[last] != words[-1]:
                    ideal[last] = delay
                    ca[last] = ca_delay
        text, items, words = new_text, new_items, new_words
    if text is None:
        return None
    return StreamOutput("", text, ideal, ca)


def guess_detokenizer(path: str | os.PathLike) -> str:
    """"spm" if any generated token carries the U+2581 word marker, else "word"."""
    for _, line in _json_lines(path):
        if "generated_tokens" in line and ("\u2581" in line or "\\u2581" in line):
            return "spm"
    return "word"


def read_simulstream(path: str | os.PathLike, unit: str = "word", detokenizer: str = "auto",
                     strict: bool = False) -> tuple[list[StreamOutput], list[str]]:
    """Replay a simulstream metrics log into one :class:`StreamOutput` per audio (in log order)."""
    detok = detokenizer_for(guess_detokenizer(path) if detokenizer == "auto" else detokenizer)
    warnings: list[str] = []
    names: dict[Any, str] = {}
    by_audio: dict[str, list[dict]] = {}
    for number, line in _json_lines(path):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict):
                raise ValueError("line is not a JSON object")
            if "metadata" in obj:
                names[obj["id"]] = Path(obj["metadata"]["wav_name"]).stem
            elif "id" in obj:
                if obj["id"] not in names:
                    raise ValueError(f"id {obj['id']} has no metadata line before it")
                for key in ("total_audio_processed", "computation_time"):
                    if isinstance(obj.get(key), bool) or not isinstance(obj.get(key), (int, float)):
                        raise ValueError(f"{key!r} must be a number")
                by_audio.setdefault(names[obj["id"]], []).append(obj)
        except (json.JSONDecodeError, ValueError, KeyError, TypeError) as e:
            message = f"{path}:{number}: malformed line skipped ({e})"
            if strict:
                raise ValueError(message) from None
            warnings.append(message)
    outputs = []
    for name, lines in by_audio.items():
        try:
            out = _replay(lines, detok, unit)
        except (ValueError, IndexError) as e:
            raise ValueError(f"{path}: audio {name}: {e}") from None
        if out is not None:
            out.name = name
            outputs.append(out)
    return outputs, warnings


# --------------------------------------------------------------------------------------------------
# writing


def instance_record(index: int, prediction_words: Sequence[str], delays: Sequence[float], elapsed: Sequence[float],
                    source_length: float, reference: str | None, source: Sequence[str] | str | None = None) -> dict:
    """One SimulEval ``instances.log`` object (the keys and order of ``Instance.summarize()``)."""
    if len(delays) != len(prediction_words) or len(elapsed) != len(delays):
        raise ValueError(f"instance {index}: {len(prediction_words)} words, {len(delays)} delays, {len(elapsed)} elapsed")
    if isinstance(source, str):
        source = [source]
    return {
        "index": index,
        "prediction": " ".join(prediction_words),
        "delays": list(delays),
        "elapsed": list(elapsed),
        "prediction_length": len(prediction_words),
        "reference": reference,
        "source": list(source) if source is not None else [],
        "source_length": source_length,
    }


def write_instance(stream: TextIO, record: dict) -> None:
    """Append one record as a JSON line, as SimulEval's ``write_log`` does."""
    stream.write(json.dumps(record) + "\n")


def write_instances(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write a whole instances.log."""
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            write_instance(f, record)


def read_references(path: str | os.PathLike) -> list[str]:
    """One reference per line, newline removed (not stripped: SimulEval counts spaces)."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def read_segments(path: str | os.PathLike) -> list[dict]:
    """MuST-C style segmentation (YAML or JSON list of {wav, offset, duration} in seconds)."""
    import yaml

    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        segments = json.loads(text)
    else:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
        segments = yaml.load(text, Loader=loader)
    if not isinstance(segments, list):
        raise ValueError(f"{path}: expected a list of segments")
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or not {"wav", "offset", "duration"} <= seg.keys():
            raise ValueError(f"{path}: segment {i} needs wav, offset and duration")
    return segments
