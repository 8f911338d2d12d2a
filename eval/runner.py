"""`streamst eval`: stream a MuST-C split through one model and policy and write comparable results to a folder.

Short-form: one `Session` per reference segment (as SimulEval). Long-form (`--longform`): one `Session` per talk
(as simulstream/StreamAtt), then re-segmentation to the reference segments for StreamLAAL, LongYAAL and quality.
Outputs in `--out`: `instances.log` (SimulEval), `simulstream.log` (long-form, per-step compute), `segments.yaml`
and `references.txt` (long-form, what `streamst score --segments` needs), `scores.json`, `scores.tsv`,
`delays.png`, `skipped.jsonl`, `run.json` (the settings, checked on resume).

Resume: each finished unit (segment or talk) is appended and fsync'ed; a rerun with the same `--out` and settings
drops a torn last line and does only the units missing from `instances.log`. The final log is rewritten sorted
by index, so output order never depends on `--workers`. Every other file is written to a temporary name, fsync'ed
and renamed, so a kill at any point leaves whole files (tests/test_reliability.py kills runs with SIGKILL).
"""
from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from . import formats, latency, longform, quality

METRICS = latency.PLAIN_METRICS
UNIT = "word"
SHORTFORM_POLICY = "alignatt:frames=4"
# A talk is one stream of many minutes: StreamAtt keeps the forced history and the audio memory bounded, where
# AlignAtt re-reads every committed token each chunk and runs into the decoder's 512 positions.
LONGFORM_POLICY = "streamatt:frames=4,history_words=20"


@dataclass(frozen=True)
class EvalConfig:
    """Everything that decides the numbers of a run (a resumed run must match it)."""

    mustc: str
    pair: str
    split: str
    model: str
    policy: str
    task: str = "st"
    longform: bool = False
    chunk_ms: float = 320.0
    beam: int = 1
    limit: int | None = None


# ---------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--policy", default=None,
                        help=f"policy spec (default: {SHORTFORM_POLICY}; with --longform {LONGFORM_POLICY})")
    parser.add_argument("--out", default=None, help="output folder (default eval-<split>-<model>-<policy>)")
    parser.add_argument("--fresh", action="store_true", help="discard an earlier run in --out instead of resuming")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `streamst eval` and `streamst sweep`."""
    parser.add_argument("--mustc", required=True, metavar="ROOT", help="MuST-C v1 layout root (holds PAIR/data/SPLIT)")
    parser.add_argument("--pair", default="en-de", help="language pair folder (default en-de; en-en for ASR corpora)")
    parser.add_argument("--split", default="tst-COMMON", help="split folder under PAIR/data (default tst-COMMON)")
    parser.add_argument("--model", default=None,
                        help="model name (see `streamst models`) or checkpoint path (default: the shipped model "
                             "of the pair and task: en-de, en-es, or for en-en the default ASR model)")
    parser.add_argument("--task", choices=["st", "asr"], default=None,
                        help="reference side: st = target text, asr = source transcript (default: the model's task)")
    parser.add_argument("--longform", action="store_true", help="one stream per talk, re-segmented for scoring")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N segments (long-form: N talks)")
    parser.add_argument("--chunk-ms", type=float, default=320.0, help="source chunk size (default 320)")
    parser.add_argument("--beam", type=int, default=1, help="beam size (default 1: greedy)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    resolve_model_and_task(args)
    config = config_from_args(args, args.policy or (LONGFORM_POLICY if args.longform else SHORTFORM_POLICY))
    check_data(config)
    out = Path(args.out or f"eval-{args.split}-{Path(config.model).stem}-{slug(config.policy)}")
    scores = evaluate(config, out, workers=args.workers, progress=not args.no_progress, fresh=args.fresh)
    print_scores(scores, sys.stdout)
    print(f"results in {out}", file=sys.stderr)
    return 0


def config_from_args(args: argparse.Namespace, policy: str) -> EvalConfig:
    """Validate the shared options and resolve the task and the canonical policy spec."""
    from streamst.policies import parse_policy

    if args.workers < 1:
        raise ValueError("--workers must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise ValueError("--limit must be at least 1")
    if args.beam < 1:
        raise ValueError("--beam must be at least 1")
    if not 0 < args.chunk_ms <= 60_000:
        raise ValueError("--chunk-ms must be in (0, 60000]")
    spec = parse_policy(policy).spec()
    if args.model is None:
        resolve_model_and_task(args)
    task = args.task or model_task(args.model)
    return EvalConfig(mustc=str(Path(args.mustc).resolve()), pair=args.pair, split=args.split, model=args.model,
                      policy=spec, task=task, longform=args.longform, chunk_ms=args.chunk_ms, beam=args.beam,
                      limit=args.limit)


def resolve_model_and_task(args: argparse.Namespace) -> None:
    """Fill in `args.model` (the pair's and task's default, `streamst.commands.common.default_model`) and
    `args.task`, and refuse a model whose languages do not match `--pair` (en-de scored against Spanish)."""
    from streamst.commands.common import check_model_languages, default_model

    parts = args.pair.split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"--pair must look like en-de (or en-en for ASR corpora), got {args.pair!r}")
    if args.model is None:
        args.task = args.task or ("asr" if parts[0] == parts[1] else "st")
        args.model = default_model(args.task, args.pair)
    else:
        args.task = args.task or model_task(args.model)
    check_model_languages(args.model, args.task, args.pair)


def check_data(config: EvalConfig) -> None:
    """Fail on a wrong --mustc, --pair or --split before anything is written."""
    from streamst.data.mustc import split_paths

    root = Path(config.mustc)
    if not root.is_dir():
        raise FileNotFoundError(f"--mustc {root} is not a folder")
    if not (root / config.pair).is_dir():
        pairs = sorted(p.name for p in root.iterdir() if (p / "data").is_dir())
        raise FileNotFoundError(f"no pair {config.pair!r} under {root} (found: {', '.join(pairs) or 'none'})")
    yaml_path, src, tgt, _ = split_paths(root, config.pair, config.split)
    if not yaml_path.parent.parent.is_dir():
        splits = sorted(p.name for p in (root / config.pair / "data").glob("*") if p.is_dir())
        raise FileNotFoundError(f"no split {config.split!r} of {config.pair} under {root} "
                                f"(found: {', '.join(splits) or 'none'})")
    for p in (yaml_path, src, tgt):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing")


def model_task(model: str) -> str:
    """"asr" or "st", as the checkpoint says."""
    from streamst.checkpoint import read_checkpoint, resolve_model

    try:
        task = read_checkpoint(resolve_model(model)).get("task", "st")
    except (FileNotFoundError, OSError, ValueError):  # not a single checkpoint file (a converted Whisper folder)
        from streamst.checkpoint import load_model

        task = getattr(load_model(model), "task", "st")
    return "asr" if task == "asr" else "st"


def slug(text: str) -> str:
    """A folder name for a policy spec."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("_")


# ---------------------------------------------------------------------------------------------------- units of work


@dataclass
class Unit:
    """One stream to run: a segment (short-form) or a whole talk (long-form)."""

    index: int
    wav: str
    offset: float  # seconds into the wav (0 for a talk)
    duration: float  # seconds (None-like 0 for a whole talk: read to the end)
    reference: str
    audio: np.ndarray | None = None  # short-form: the sliced samples, read by the parent once per talk


_WORKER: dict[str, Any] = {}


def _init_worker(model: str, policy: str, chunk_ms: float, beam: int, threads: int | None) -> None:
    """Load the model and policy once per process."""
    import torch

    from streamst.checkpoint import load_model
    from streamst.policies import parse_policy

    if threads:
        torch.set_num_threads(threads)
    _WORKER.update(model=load_model(model), policy=parse_policy(policy), chunk_ms=chunk_ms, beam=beam)
    _stream(np.zeros(int(2 * chunk_ms * 16), dtype=np.float32))  # warm-up: one-off start-up costs are not compute


def _stream(audio: np.ndarray, on_step: Callable[[float, float, list[str]], None] | None = None):
    """Run one Session over `audio` chunk by chunk; returns (words, session). `on_step(audio_s, compute_s, words)`."""
    from streamst.events import Word
    from streamst.session import Session

    session = Session(_WORKER["model"], _WORKER["policy"], chunk_ms=_WORKER["chunk_ms"], beam=_WORKER["beam"])
    step = session.chunker.chunk_samples
    words: list[Word] = []
    pieces = [audio[i:i + step] for i in range(0, len(audio), step)]
    for piece in pieces + [None]:
        before, chunks_before = session.compute_s, session.chunks
        events = session.push(piece) if piece is not None else session.finish()
        new = [e for e in events if isinstance(e, Word)]
        words += new
        if on_step is not None and session.chunks > chunks_before:
            on_step(session.source_ms / 1000.0, session.compute_s - before, [w.text for w in new])
    return words, session


def _check_unit(unit: Unit, audio: np.ndarray) -> None:
    if not unit.reference.strip():
        raise ValueError("empty reference")
    if audio.size == 0:
        raise ValueError("no audio")
    if not np.all(np.isfinite(audio)):
        raise ValueError("audio holds NaN or infinite samples")


def run_segment(unit: Unit) -> dict:
    """Stream one segment; returns {"record": SimulEval record} or {"error": message}."""
    try:
        audio = unit.audio
        _check_unit(unit, audio)
        words, session = _stream(audio)
        record = formats.instance_record(
            unit.index, [w.text for w in words], [w.emitted_ms for w in words],
            [w.emitted_ms + w.compute_ms for w in words], len(audio) * 1000.0 / 16000, unit.reference, unit.wav)
        record["compute_ms"] = session.compute_s * 1000.0
        return {"index": unit.index, "record": record}
    except Exception as e:  # a bad segment is reported and skipped, never fatal
        return {"index": unit.index, "error": f"{type(e).__name__}: {e}"}


def run_talk(unit: Unit) -> dict:
    """Stream one whole talk; returns its SimulEval record and its simulstream per-step lines (or an error)."""
    from streamst.data.mustc import load_talk_audio

    try:
        audio = load_talk_audio(Path(unit.wav))
        _check_unit(unit, audio)
        steps: list[dict] = [{"id": unit.index, "metadata": {"wav_name": Path(unit.wav).name}}]

        def on_step(audio_s: float, compute_s: float, new_words: list[str]) -> None:
            steps.append({"id": unit.index, "total_audio_processed": audio_s, "computation_time": compute_s,
                          "generated_tokens": new_words, "deleted_tokens": []})
            if _WORKER.get("progress") is not None:
                _WORKER["progress"](audio_s)

        words, session = _stream(audio, on_step)
        record = formats.instance_record(
            unit.index, [w.text for w in words], [w.emitted_ms for w in words],
            [w.emitted_ms + w.compute_ms for w in words], len(audio) * 1000.0 / 16000, unit.reference, unit.wav)
        record["compute_ms"] = session.compute_s * 1000.0
        return {"index": unit.index, "record": record, "steps": steps}
    except Exception as e:
        return {"index": unit.index, "error": f"{type(e).__name__}: {e}"}


# ---------------------------------------------------------------------------------------------------- durable logs


def read_jsonl(path: Path) -> tuple[list[dict], int]:
    """Good JSON-object lines of a file and the number of bad ones (a torn last line after a kill)."""
    if not path.exists():
        return [], 0
    good, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict) and line.endswith("\n"):
                good.append(obj)
            else:
                bad += 1
    return good, bad


def write_jsonl_atomic(path: Path, objects: Iterable[dict]) -> None:
    """Replace a file with these lines, never leaving a half-written file behind."""
    write_text_atomic(path, "".join(json.dumps(obj) + "\n" for obj in objects))


def write_text_atomic(path: Path, text: str) -> None:
    """Write-then-rename with fsync: a kill at any point leaves the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AppendLog:
    """A JSON-lines file opened for appending; every `append` is flushed and fsync'ed before it returns."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def append(self, objects: list[dict]) -> None:
        self.file.write("".join(json.dumps(o) + "\n" for o in objects))
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        self.file.close()


# ---------------------------------------------------------------------------------------------------- the run


def plan_units(config: EvalConfig) -> tuple[list[Unit], list[dict], list]:
    """(units to run, reader problems as skipped entries, the segments in scope) for a config."""
    from streamst.data.mustc import read_split_checked

    segments, problems = read_split_checked(config.mustc, config.pair, config.split)
    skipped = [{"index": None, "reason": str(p)} for p in problems]
    side = (lambda s: s.source) if config.task == "asr" else (lambda s: s.target)
    if not config.longform:
        segments = segments[: config.limit] if config.limit else segments
        units = [Unit(s.index, str(s.wav), s.offset, s.duration, side(s)) for s in segments]
        return units, skipped, segments
    talks: dict[Path, list] = {}
    for s in segments:
        talks.setdefault(s.wav, []).append(s)
    chosen = list(talks.items())[: config.limit] if config.limit else list(talks.items())
    units, in_scope = [], []
    for k, (wav, talk_segments) in enumerate(chosen):
        talk_segments = sorted(talk_segments, key=lambda s: s.offset)
        in_scope += talk_segments
        units.append(Unit(k, str(wav), 0.0, 0.0, " ".join(side(s) for s in talk_segments)))
    return units, skipped, in_scope


def _with_audio(units: list[Unit]) -> Iterator[Unit]:
    """Short-form units with their samples, each talk wav read once (consecutive units of a talk share it)."""
    from streamst.data.mustc import load_talk_audio

    current, audio = None, None
    for unit in units:
        if unit.wav != current:
            current = unit.wav
            try:
                audio = load_talk_audio(Path(unit.wav))
            except Exception:  # reported per segment by run_segment
                audio = np.zeros(0, dtype=np.float32)
        start = int(round(unit.offset * 16000))
        unit.audio = audio[start: start + int(round(unit.duration * 16000))]
        yield unit


def _prepare_out(out: Path, config: EvalConfig, fresh: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    run_file = out / "run.json"
    if fresh:
        for name in ("instances.log", "simulstream.log", "skipped.jsonl", "scores.json", "scores.tsv", "run.json"):
            (out / name).unlink(missing_ok=True)
    if run_file.exists():
        before = json.loads(run_file.read_text())
        if before != asdict(config):
            changed = [k for k in asdict(config) if before.get(k) != asdict(config)[k]]
            raise ValueError(f"{out} holds a run with other settings ({', '.join(changed)}); "
                             "use another --out or --fresh")
    else:
        write_text_atomic(run_file, json.dumps(asdict(config), indent=2) + "\n")


def evaluate(config: EvalConfig, out: Path, workers: int = 1, progress: bool = True, fresh: bool = False,
             log: Callable[[str], None] | None = None) -> dict:
    """Run (or resume) one evaluation into `out` and return the scores written to scores.json."""
    log = log or (lambda m: print(f"streamst eval: {m}", file=sys.stderr))
    out = Path(out)
    units, skipped, in_scope = plan_units(config)  # a wrong path or split fails here, before run.json is written
    _prepare_out(out, config, fresh)
    for entry in skipped:
        log(f"skipped: {entry['reason']}")
    instances_path, steps_path = out / "instances.log", out / "simulstream.log"
    done_records, torn = read_jsonl(instances_path)
    wanted = {u.index for u in units}
    by_index = {r["index"]: r for r in done_records if r.get("index") in wanted}
    steps, torn_steps = read_jsonl(steps_path) if config.longform else ([], 0)
    steps = [s for s in steps if s.get("id") in by_index]
    if torn or torn_steps or len(by_index) != len(done_records):
        log(f"resuming: dropped {torn + torn_steps} torn line(s)")
    write_jsonl_atomic(instances_path, [by_index[i] for i in sorted(by_index)])
    if config.longform:
        write_jsonl_atomic(steps_path, steps)
    pending = [u for u in units if u.index not in by_index]
    if by_index:
        log(f"resuming: {len(by_index)} of {len(units)} done, {len(pending)} to go")

    started = time.perf_counter()
    failures: list[dict] = []
    record_log = AppendLog(instances_path)
    step_log = AppendLog(steps_path) if config.longform else None
    try:
        done_s = sum(unit_seconds(u) for u in units if u.index in by_index)
        total_s = done_s + sum(unit_seconds(u) for u in pending)
        for result in _results(config, pending, workers, progress, total_s, done_s):
            if "error" in result:
                failures.append({"index": result["index"], "reason": result["error"]})
                log(f"{'talk' if config.longform else 'segment'} {result['index']} skipped: {result['error']}")
                continue
            if step_log is not None:
                step_log.append(result["steps"])
            record_log.append([result["record"]])
            by_index[result["index"]] = result["record"]
    finally:
        record_log.close()
        if step_log is not None:
            step_log.close()
    wall_s = time.perf_counter() - started
    records = [by_index[i] for i in sorted(by_index)]
    write_jsonl_atomic(instances_path, records)
    if config.longform:
        order = {i: k for k, i in enumerate(sorted(by_index))}
        steps, _ = read_jsonl(steps_path)
        write_jsonl_atomic(steps_path, sorted(steps, key=lambda s: order.get(s["id"], -1)))
    write_jsonl_atomic(out / "skipped.jsonl", skipped + failures)
    if not records:
        raise ValueError(f"no {'talk' if config.longform else 'segment'} could be evaluated (see {out}/skipped.jsonl)")
    scores = score_run(config, out, records, in_scope, wall_s, len(skipped) + len(failures))
    write_text_atomic(out / "scores.json", json.dumps(scores, indent=2) + "\n")
    write_scores_tsv(out / "scores.tsv", scores)
    try:
        from . import plots

        tmp_png = out / "delays.tmp.png"
        plots.plot_delays(records, tmp_png, longform=config.longform)
        os.replace(tmp_png, out / "delays.png")
    except ImportError as e:
        log(f"no delays.png ({e}); install matplotlib")
    return scores


def unit_seconds(unit: Unit) -> float:
    """Audio seconds of a unit: the segment's duration, or the whole talk's (from the wav header)."""
    if unit.duration > 0:
        return unit.duration
    try:
        import soundfile

        return float(soundfile.info(unit.wav).duration)
    except Exception:  # an unreadable talk is reported when it runs
        return 0.0


def _results(config: EvalConfig, pending: list[Unit], workers: int, progress: bool, total_s: float,
             done_s: float) -> Iterator[dict]:
    """Results of the pending units in their order, from this process or a pool of `workers`.

    The progress bar counts audio seconds, so a long talk moves it as it streams (one process) or when it ends
    (a pool), and a short segment moves it little.
    """
    from tqdm import tqdm

    job = run_talk if config.longform else run_segment
    jobs = pending if config.longform else _with_audio(pending)
    bar = tqdm(total=round(total_s, 1), initial=round(done_s, 1), unit="s", unit_scale=False, file=sys.stderr,
               disable=not progress, dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s audio "
               "[{elapsed}<{remaining}]")
    init = (config.model, config.policy, config.chunk_ms, config.beam)
    try:
        if workers == 1 or len(pending) <= 1:
            _init_worker(*init, None)
            for unit in jobs:
                seen = [0.0]

                def advance(audio_s: float, seen=seen) -> None:
                    bar.update(max(0.0, audio_s - seen[0]))
                    seen[0] = max(seen[0], audio_s)

                _WORKER["progress"] = advance
                result = job(unit)
                _WORKER["progress"] = None
                bar.update(max(0.0, unit_seconds(unit) - seen[0]))
                yield result
            return
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(*init, 1)) as pool:
            # imap would read every job (and its audio) at once: feed it a window at a time instead
            jobs = iter(jobs)
            while window := list(itertools.islice(jobs, 4 * workers)):
                for unit, result in zip(window, pool.imap(job, window, chunksize=1)):
                    yield result
                    bar.update(unit_seconds(unit))
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------------- scoring


def score_shortform(records: list[dict]) -> tuple[dict, dict]:
    """Corpus latency (plain and _CA) and quality of short-form records, as `streamst score --computation-aware`."""
    per_metric: dict[str, list] = {}
    for rec in records:
        n = len(rec["delays"])
        ref_len = latency.reference_length(rec["reference"], UNIT, n)
        yaal_len = latency.yaal_reference_length(rec["reference"], UNIT, n)
        values = latency.score_instance(rec["delays"], rec["source_length"], ref_len, rec["elapsed"], True, METRICS,
                                        yaal_ref_len=yaal_len)
        for key, value in values.values.items():
            per_metric.setdefault(key, []).append(value)
    corpus = {key: latency.corpus_mean(values) for key, values in per_metric.items()}
    signatures = _quality([r["prediction"] for r in records], [r["reference"] for r in records], corpus)
    return corpus, signatures


def score_longform(out: Path, in_scope: list, records: list[dict], task: str) -> tuple[dict, dict]:
    """StreamLAAL, LongYAAL (and _CA from per-step compute) and quality after re-segmentation of finished talks."""
    done_wavs = {Path(r["source"][0]).name for r in records}
    kept = [s for s in in_scope if s.wav.name in done_wavs]
    raw = [{"wav": s.wav.name, "offset": s.offset, "duration": s.duration} for s in kept]
    refs = [s.source if task == "asr" else s.target for s in kept]
    write_text_atomic(out / "segments.yaml", "".join(
        f"- {{duration: {r['duration']!r}, offset: {r['offset']!r}, wav: {r['wav']}}}\n" for r in raw))
    write_text_atomic(out / "references.txt", "".join(r + "\n" for r in refs))
    segments = longform.make_segments(formats.read_segments(out / "segments.yaml"),
                                      formats.read_references(out / "references.txt"))
    outputs, _ = formats.read_simulstream(out / "simulstream.log", UNIT, "word")
    talks = longform.talks_from_simulstream(outputs)
    laal = longform.stream_laal(segments, talks, UNIT, True)
    yaal = longform.long_yaal(segments, talks, UNIT, None, True)
    for warning in laal.warnings + yaal.warnings:
        print(f"streamst eval: warning: {warning}", file=sys.stderr)
    corpus = {**laal.values, **yaal.values}
    reseg = yaal.resegmented
    signatures = _quality([r["prediction"] for r in reseg], [r["reference"] for r in reseg], corpus)
    return corpus, signatures


def _quality(predictions: list[str], references: list[str], corpus: dict) -> dict:
    b = quality.bleu(predictions, references)
    c = quality.chrf(predictions, references)
    corpus["BLEU"], corpus["chrF"], corpus["WER"] = b.score, c.score, quality.wer(predictions, references)
    return {"BLEU": b.signature, "chrF": c.signature}


def score_run(config: EvalConfig, out: Path, records: list[dict], in_scope: list, wall_s: float,
              skipped: int) -> dict:
    """scores.json: metrics, signatures, speed and provenance."""
    if config.longform:
        corpus, signatures = score_longform(out, in_scope, records, config.task)
    else:
        corpus, signatures = score_shortform(records)
    audio_s = sum(r["source_length"] for r in records) / 1000.0
    compute_s = sum(r.get("compute_ms", 0.0) for r in records) / 1000.0
    return {
        "scores": corpus,
        "signatures": signatures,
        "RTF": compute_s / audio_s if audio_s else None,
        "audio_hours": audio_s / 3600.0,
        "compute_s": compute_s,
        "wall_s_this_run": wall_s,
        "instances": len(records),
        "skipped": skipped,
        "mode": "longform" if config.longform else "shortform",
        "latency_unit": UNIT,
        "config": asdict(config),
        "model": config.model,
        "policy": config.policy,
        "git_revision": git_revision(),
        "machine": machine(),
    }


def write_scores_tsv(path: Path, scores: dict) -> None:
    """One header line and one value line, as SimulEval's scores.tsv, plus speed and provenance columns."""
    row = {**{k: ("" if v is None else round(v, 3)) for k, v in scores["scores"].items()},
           "RTF": round(scores["RTF"], 4) if scores["RTF"] is not None else "",
           "audio_hours": round(scores["audio_hours"], 4), "instances": scores["instances"],
           "skipped": scores["skipped"], "mode": scores["mode"], "model": scores["model"],
           "policy": scores["policy"], "git_revision": scores["git_revision"], "machine": scores["machine"]}
    write_text_atomic(path, "\t".join(row) + "\n" + "\t".join(str(v) for v in row.values()) + "\n")


def print_scores(scores: dict, stream) -> None:
    for key, value in scores["scores"].items():
        print(f"{key:<16}{'n/a' if value is None else f'{value:.3f}'}", file=stream)
    print(f"{'RTF':<16}{scores['RTF']:.4f}", file=stream)
    print(f"{'audio hours':<16}{scores['audio_hours']:.4f}", file=stream)
    print(f"BLEU signature: {scores['signatures'].get('BLEU')}", file=stream)


def git_revision() -> str:
    """The source revision of this streamst (with '+dirty' for local changes), or 'unknown'."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        if not rev:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    """CPU model, core count and Python/torch versions: enough to tell which machine gave the numbers."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = "none"
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()}, Python {platform.python_version()}, torch {torch_version}"
