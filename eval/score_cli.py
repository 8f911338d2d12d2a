"""`streamst score`: latency and quality of a SimulEval instances.log, OmniSTEval JSONL or simulstream log.

Short-form (no ``--segments``): every line is one sentence; AL, LAAL, YAAL, DAL, AP, ATD, StartOffset,
EndOffset (and ``_CA`` forms with ``--computation-aware``) per instance and as the corpus mean, plus BLEU,
chrF, WER (and CER for ``--latency-unit char``). Long-form (``--segments``): FILE holds one instance per
talk (or is a simulstream log); StreamLAAL and LongYAAL in ms (and ``_CA``), BLEU/chrF/WER on the
SoftSegmenter re-segmentation. Undefined values are null in JSON, with the reason on stderr.
Torch is never imported.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

from . import formats, latency, longform, quality


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="instances.log, OmniSTEval JSONL or simulstream metrics log")
    parser.add_argument("--references", metavar="REF.txt", help="one reference per line (overrides the log's)")
    parser.add_argument("--segments", metavar="SEG.yaml", help="reference segmentation: long-form scoring")
    parser.add_argument("--latency-unit", choices=["word", "char", "spm"], default="word",
                        help="what a delay counts: words, characters (Chinese, Japanese), or SentencePiece pieces "
                             "(short-form, with --spm-model); long-form spm is simulstream's: tokens joined at "
                             "U+2581, counted as words")
    parser.add_argument("--spm-model", metavar="M", help="SentencePiece model for --latency-unit spm")
    parser.add_argument("--computation-aware", action="store_true", help="also the _CA metrics (from elapsed)")
    parser.add_argument("--per-instance", action="store_true", help="also the per-instance values")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-fix-emission-ca", action="store_true",
                        help="long-form: use SimulEval's cumulative elapsed as is (no OmniSTEval correction)")
    parser.add_argument("--lang", default=None,
                        help="long-form: target language for Moses tokenisation in LongYAAL's SoftSegmenter "
                             "(OmniSTEval --lang; default none)")
    parser.add_argument("--detokenizer", choices=["auto", "word", "char", "spm"], default="auto",
                        help="simulstream logs: how generated tokens join (auto: spm if tokens carry U+2581)")
    parser.add_argument("--bleu-tokenizer", default="13a", help="sacrebleu tokenizer for BLEU (default 13a)")
    parser.add_argument("--strict", action="store_true", help="fail on a malformed line instead of skipping it")


def _warn(message: str) -> None:
    print(f"streamst score: warning: {message}", file=sys.stderr)


def _quality(predictions: list[str], references: list[str | None], unit: str, bleu_tokenizer: str,
             corpus: dict, signatures: dict) -> None:
    if not predictions:
        return
    if any(r is None for r in references):
        _warn("some references are null: BLEU, chrF and WER not computed")
        return
    b = quality.bleu(predictions, references, bleu_tokenizer)
    c = quality.chrf(predictions, references)
    corpus["BLEU"], corpus["chrF"] = b.score, c.score
    signatures["BLEU"], signatures["chrF"] = b.signature, c.signature
    corpus["WER"] = quality.wer(predictions, references)
    if unit == "char":
        corpus["CER"] = quality.cer(predictions, references)


def _shortform(args, log: formats.LogFile) -> tuple[dict, list[dict], dict]:
    records = log.records
    references: list[str | None] = [r.reference for r in records]
    if args.references:
        lines = formats.read_references(args.references)
        if len(lines) != len(records):
            raise ValueError(f"{args.references}: {len(lines)} references for {len(records)} instances")
        references = list(lines)
    encode = None
    if args.latency_unit == "spm":
        if not args.spm_model:
            raise ValueError("--latency-unit spm needs --spm-model")
        import sentencepiece as spm

        processor = spm.SentencePieceProcessor(model_file=args.spm_model)
        encode = lambda text: processor.encode(text, out_type=str)  # noqa: E731
    metrics = latency.PLAIN_METRICS
    names = list(metrics) + ([m + "_CA" for m in metrics] if args.computation_aware else [])
    per_instance: list[dict] = []
    undefined: dict[tuple[str, str], list[int]] = defaultdict(list)
    for rec, ref in zip(records, references):
        n = len(rec.delays) if rec.delays else 0
        ref_len = latency.reference_length(ref, args.latency_unit, n, encode)
        yaal_len = latency.yaal_reference_length(ref, args.latency_unit, n, encode)
        scores = latency.score_instance(rec.delays, rec.source_length, ref_len, rec.elapsed,
                                        args.computation_aware, metrics, yaal_ref_len=yaal_len)
        per_instance.append({"index": rec.index, **{k: scores.values[k] for k in names}})
        for key, reason in scores.reasons.items():
            undefined[(key, reason)].append(rec.index)
    for (key, reason), indices in undefined.items():
        shown = ", ".join(map(str, indices[:10])) + (", ..." if len(indices) > 10 else "")
        _warn(f"{key} undefined for {len(indices)} instance(s) ({reason}): {shown}")
    corpus = {k: latency.corpus_mean(row[k] for row in per_instance) for k in names}
    signatures: dict = {}
    _quality([r.prediction for r in records], references, args.latency_unit, args.bleu_tokenizer, corpus, signatures)
    return corpus, per_instance, signatures


def _longform(args) -> tuple[dict, list[dict], dict]:
    if not args.references:
        raise ValueError("--segments needs --references (one line per segment)")
    unit, detokenizer = args.latency_unit, args.detokenizer
    if unit == "spm":  # as simulstream's `latency_unit: spm`: tokens joined at U+2581, latency counted in words
        unit, detokenizer = "word", ("spm" if detokenizer == "auto" else detokenizer)
    args.latency_unit = unit
    segments = longform.make_segments(formats.read_segments(args.segments), formats.read_references(args.references))
    if formats.sniff_kind(args.file) == "simulstream":
        outputs, warnings = formats.read_simulstream(args.file, unit, detokenizer, args.strict)
        talks = longform.talks_from_simulstream(outputs)
    else:
        log = formats.read_instances(args.file, args.strict)
        warnings = log.warnings
        talks = longform.talks_from_instances(log.records, fix_ca=not args.no_fix_emission_ca)
    for w in warnings:
        _warn(w)
    ca = args.computation_aware
    laal = longform.stream_laal(segments, talks, args.latency_unit, ca)
    yaal = longform.long_yaal(segments, talks, args.latency_unit, args.lang, ca)
    for w in laal.warnings + yaal.warnings:
        _warn(w)
    corpus = {**laal.values, **yaal.values}
    signatures: dict = {}
    reseg = yaal.resegmented
    _quality([r["prediction"] for r in reseg], [r["reference"] for r in reseg], args.latency_unit,
             args.bleu_tokenizer, corpus, signatures)
    keys = ["LongYAAL"] + (["LongYAAL_CA"] if ca else [])
    per_instance = [{"index": r["index"], **{k: r.get(k) for k in keys}} for r in reseg]
    return corpus, per_instance, signatures


def run(args: argparse.Namespace) -> int:
    formats.check_text_log(args.file)
    for extra in (args.references, args.segments):
        if extra:
            formats.check_text_log(extra)
    if args.segments:
        corpus, per_instance, signatures = _longform(args)
    else:
        if formats.sniff_kind(args.file) == "simulstream":
            raise ValueError(f"{args.file} is a simulstream log (long-form): pass --segments and --references")
        log = formats.read_instances(args.file, args.strict)
        for w in log.warnings:
            _warn(w)
        if not log.records:
            raise ValueError(f"{args.file}: no instances")
        corpus, per_instance, signatures = _shortform(args, log)
    if args.json:
        out: dict = {"corpus": corpus}
        if args.per_instance:
            out["instances"] = per_instance
        if signatures:
            out["signatures"] = signatures
        print(json.dumps(out))
        return 0
    width = max(len(k) for k in corpus) if corpus else 0
    for key, value in corpus.items():
        print(f"{key:<{width}}  {'n/a' if value is None else f'{value:.3f}'}")
    for key, sig in signatures.items():
        print(f"{key} signature: {sig}")
    if args.per_instance and per_instance:
        keys = [k for k in per_instance[0] if k != "index"]
        print("\t".join(["index"] + keys))
        for row in per_instance:
            print("\t".join([str(row["index"])] + ["n/a" if row[k] is None else f"{row[k]:.3f}" for k in keys]))
    return 0
