"""Issue #20, the first hour of a new user: conventions, defaults, clear errors and valid output, run as a user runs
them (the `streamst` command in a subprocess, or `main()`), on the shipped models and the tiny trained model."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamst.cli import main
from test_eval_runner import build_tiny_mustc

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "streamst" / "assets" / "sample-en.wav"
ORACLE_PY = ROOT / ".venv-oracles" / "bin" / "python"


def cli(*args: str, cwd: Path | None = None, pre: str = "") -> subprocess.CompletedProcess:
    """`python -m streamst ARGS` (with `pre` run first inside the same interpreter, when given)."""
    cmd = [sys.executable, "-c", f"{pre}; import runpy, sys; sys.argv = ['streamst', *{list(args)!r}]; "
           "runpy.run_module('streamst', run_name='__main__')"] if pre else [sys.executable, "-m", "streamst", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)


# ---------------------------------------------------------------------------------------------------- conventions


def test_version_usage_and_help_follow_conventions():
    from streamst import __version__

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"streamst {__version__}"
    out = cli()
    assert out.returncode == 2 and out.stdout == "" and out.stderr.startswith("usage: streamst")
    out = cli("--help")
    assert out.returncode == 0 and "translate" in out.stdout and "Live captions" in out.stdout
    out = cli("no-such-command")
    assert out.returncode == 2 and "unknown command 'no-such-command'" in out.stderr


def test_every_option_says_its_default_and_format_is_explained():
    out = cli("translate", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for fragment in ("(default: alignatt:frames=4)", "(default: 1)", "(default: text)", "mp3", "srt or vtt",
                     "--out-dir", "(default: en-de"):
        assert fragment in text, fragment
    text = " ".join(cli("eval", "--help").stdout.split())
    for fragment in ("(default tst-COMMON)", "(default: the shipped model", "streamatt"):
        assert fragment in text, fragment


# ---------------------------------------------------------------------------------------------------- defaults


def test_one_default_model_table_for_every_task():
    from streamst.checkpoint import available_models
    from streamst.commands.common import DEFAULT_MODELS, default_model

    have = available_models()
    assert default_model("st") == "en-de" and default_model("st", "en-es") == "en-es"
    asr = default_model("asr")
    assert asr == next(n for n in DEFAULT_MODELS[("asr", "en")] if n in have)
    assert default_model("asr", "en-en") == asr
    with pytest.raises(ValueError, match="no default translation model for 'en-fr'"):
        default_model("st", "en-fr")


def test_eval_refuses_a_model_of_another_pair_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    code = main(["eval", "--mustc", str(tmp_path), "--pair", "en-es", "--model", "en-de", "--out", str(out)])
    assert code == 2 and not out.exists()
    proc = cli("eval", "--mustc", str(tmp_path), "--pair", "en-es", "--model", "en-de", "--out", str(out))
    assert "model 'en-de' is en-de, but --pair en-es needs en->es translation" in proc.stderr
    assert "--model en-es" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_eval_without_model_picks_the_pairs_model_and_checks_data_first(tmp_path):
    out = tmp_path / "run"
    proc = cli("eval", "--mustc", str(tmp_path / "nowhere"), "--pair", "en-es", "--out", str(out))
    assert proc.returncode == 2 and "'default'" not in proc.stderr and "nowhere is not a folder" in proc.stderr
    (tmp_path / "corpus" / "en-de" / "data" / "dev").mkdir(parents=True)
    proc = cli("eval", "--mustc", str(tmp_path / "corpus"), "--pair", "en-es", "--out", str(out))
    assert proc.returncode == 2 and "no pair 'en-es'" in proc.stderr and "found: en-de" in proc.stderr
    proc = cli("eval", "--mustc", str(tmp_path / "corpus"), "--pair", "en-de", "--out", str(out))
    assert proc.returncode == 2 and "no split 'tst-COMMON'" in proc.stderr and "found: dev" in proc.stderr
    assert not out.exists()


def test_a_failed_eval_leaves_no_run_json_and_longform_defaults_to_streamatt(tmp_path, tiny_corpus, tiny_model_path):
    root = build_tiny_mustc(tmp_path / "mustc", tiny_corpus, talks=1, per_talk=2)
    out = tmp_path / "run"
    base = ["eval", "--pair", "en-en", "--model", str(tiny_model_path), "--out", str(out), "--longform"]
    assert main([*base, "--mustc", str(tmp_path / "typo")]) == 2
    assert not (out / "run.json").exists()
    proc = cli(*base, "--mustc", str(root))  # the corrected command runs, with a progress bar in audio seconds
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"\d+/\d+ s audio", proc.stderr)
    run = json.loads((out / "run.json").read_text())
    assert run["policy"].startswith("streamatt:") and run["task"] == "asr"


# ---------------------------------------------------------------------------------------------------- errors


def test_bad_audio_gets_one_line_each(tmp_path, tiny_model_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    folder = tmp_path / "folder.wav"
    folder.mkdir()
    proc = cli("transcribe", str(empty), str(folder), "--model", str(tiny_model_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert f"{empty} is empty (0 bytes)" in lines[0] and lines[0].count(str(empty)) == 1
    assert f"{folder} is a folder, not an audio file" in lines[1]


def test_score_refuses_audio_and_lines_that_are_not_instances(tmp_path):
    proc = cli("score", str(SAMPLE))
    assert proc.returncode == 2 and "is audio, not a log" in proc.stderr and str(SAMPLE) in proc.stderr
    binary = tmp_path / "x.log"
    binary.write_bytes(bytes(range(128, 256)) * 8)
    proc = cli("score", str(binary))
    assert proc.returncode == 2 and "not UTF-8 text" in proc.stderr and "x.log" in proc.stderr
    log = tmp_path / "index.log"
    log.write_text('{"index": 5}\n')
    proc = cli("score", str(log))
    assert proc.returncode == 2 and "no 'delays'" in proc.stderr and "no instances" in proc.stderr


def test_export_onnx_without_onnx_names_the_extra_and_leaves_no_folder(tmp_path):
    out = tmp_path / "onnx"
    for command in (["export-onnx", "en-de-espeak", "--out", str(out)], ["bench", "--quick"]):
        proc = cli(*command, pre="import sys; sys.modules['onnx'] = None")  # as if onnx were not installed
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert "pip install 'streamst[onnx]'" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------------- output


def _srt_cues(text: str) -> list[tuple[int, float, float, str]]:
    """Parse SRT strictly: blocks of number, `a --> b`, text; fails on anything else."""
    def ms(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, milli = rest.split(",")
        return ((int(h) * 60 + int(m)) * 60 + int(s)) * 1000 + int(milli)

    cues = []
    for block in text.strip().split("\n\n"):
        number, times, *words = block.split("\n")
        start, end = times.split(" --> ")
        assert words and all(words), block
        cues.append((int(number), ms(start), ms(end), " ".join(words)))
    return cues


def test_several_files_make_one_valid_srt_and_vtt_on_stdout(tiny_corpus, tiny_model_path):
    wavs = [str(tiny_corpus[k][0]) for k in (0, 1)]
    common = ["--model", str(tiny_model_path), "--policy", "waitk:k=2"]
    srt = cli("transcribe", *wavs, *common, "--format", "srt")
    assert srt.returncode == 0, srt.stderr
    cues = _srt_cues(srt.stdout)
    assert [c[0] for c in cues] == list(range(1, len(cues) + 1))
    assert all(a[1] <= a[2] <= b[1] for a, b in zip(cues, cues[1:]))
    first_ms = sf.info(wavs[0]).duration * 1000
    texts = [cli("transcribe", w, *common).stdout.split() for w in wavs]
    assert " ".join(c[3] for c in cues).split() == texts[0] + texts[1]
    assert any(c[1] >= first_ms for c in cues)  # the second file's cues come after the first file
    vtt = cli("transcribe", *wavs, *common, "--format", "vtt")
    assert vtt.returncode == 0 and vtt.stdout.startswith("WEBVTT\n\n") and vtt.stdout.count("WEBVTT") == 1


def test_out_dir_writes_one_subtitle_file_per_input_covering_its_words(tmp_path, tiny_corpus, tiny_model_path):
    wavs = [str(tiny_corpus[k][0]) for k in (2, 3)]
    out = tmp_path / "subs"
    proc = cli("transcribe", *wavs, "--model", str(tiny_model_path), "--policy", "waitk:k=2", "--format", "srt",
               "--out-dir", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    for wav in wavs:
        cues = _srt_cues((out / (Path(wav).stem + ".srt")).read_text())
        assert cues[0][0] == 1 and cues[0][1] < cues[-1][2]
        # the last words are committed at the end of the file, and the last cue lasts until then
        assert abs(cues[-1][2] - sf.info(wav).duration * 1000) <= 1


def test_jsonl_spans_never_run_backwards(tiny_corpus, tiny_model_path):
    for wav, _ in tiny_corpus[:4]:
        proc = cli("transcribe", str(wav), "--model", str(tiny_model_path), "--policy", "alignatt:frames=2",
                   "--format", "jsonl")
        assert proc.returncode == 0, proc.stderr
        words = [json.loads(line) for line in proc.stdout.splitlines()]
        spans = [(w["start_ms"], w["end_ms"]) for w in words if w["start_ms"] is not None]
        assert spans and all(s <= e for s, e in spans)
        assert all(a[0] <= b[0] for a, b in zip(spans, spans[1:]))


def test_span_order_repairs_a_span_that_jumps_back():
    from streamst.captions import ordered_spans
    from streamst.events import Word

    words = [Word("aus", 2560, 1, 2240, 2280), Word("dem", 2560, 1, 0, 40), Word("Haus", 2880, 1, 2300, 2840)]
    fixed = ordered_spans(words)
    assert [(w.start_ms, w.end_ms) for w in fixed] == [(2240, 2280), (2240, 2240), (2300, 2840)]


def test_mp3_is_read(tmp_path, tiny_corpus, tiny_model_path):
    wav, _ = tiny_corpus[0]
    audio, rate = sf.read(wav, dtype="float32")
    mp3 = tmp_path / "a.mp3"
    sf.write(mp3, audio, rate, format="MP3")
    proc = cli("transcribe", str(mp3), "--model", str(tiny_model_path), "--policy", "offline")
    assert proc.returncode == 0 and proc.stdout.split(), proc.stderr


def test_demo_and_translate_give_the_same_al_for_the_same_run(tmp_path):
    reference = json.loads(SAMPLE.with_suffix(".json").read_text())["target"]
    ref = tmp_path / "ref.txt"
    ref.write_text(reference + "\n")
    demo = cli("demo")
    translate = cli("translate", str(SAMPLE), "--reference", str(ref))
    assert demo.returncode == 0 and translate.returncode == 0
    al_demo = re.search(r"AL (-?\d+) ms \| LAAL (-?\d+) ms", demo.stdout).groups()
    al_translate = re.search(r"AL (-?\d+) ms, LAAL (-?\d+) ms \(reference length\)", translate.stderr).groups()
    assert al_demo == al_translate and "reference length" in demo.stdout


# ---------------------------------------------------------------------------------------------------- metrics


needs_oracles = pytest.mark.skipif(not ORACLE_PY.exists(), reason=".venv-oracles missing: run .ci/oracles.sh")


@needs_oracles
def test_yaal_counts_reference_words_as_the_omnisteval_cli_does(tmp_path):
    rng = np.random.default_rng(7)
    records, refs = [], []
    shapes = ["{}", "  {}  ", "{}   ", " {}", "{}"]
    for k in range(10):
        words = ["das", "ist", "ein", "Haus", "und", "wir"][: 2 + k % 5]
        ref = shapes[k % len(shapes)].format(("  " if k % 3 == 0 else " ").join(words))
        n = 1 + k % 4
        delays = sorted(float(x) for x in rng.integers(1, 30, n) * 100)
        records.append({"index": k, "prediction": " ".join(["x"] * n), "delays": delays,
                        "elapsed": [d + 50 for d in delays], "source_length": 3200.0, "reference": ref})
        refs.append(ref)
    log, ref_file = tmp_path / "instances.log", tmp_path / "refs.txt"
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    ref_file.write_text("".join(r + "\n" for r in refs))
    omni = subprocess.run([str(ORACLE_PY.parent / "omnisteval"), "shortform", "--hypothesis_file", str(log),
                           "--ref_sentences_file", str(ref_file), "--word_level", "--no_quality",
                           "--output_folder", str(tmp_path / "omni")], capture_output=True, text=True, timeout=600)
    assert omni.returncode == 0, omni.stderr[-2000:]
    theirs = dict(line.split("\t") for line in (tmp_path / "omni" / "scores.tsv").read_text().splitlines()[1:])
    ours = cli("score", str(log), "--references", str(ref_file), "--computation-aware", "--json")
    corpus = json.loads(ours.stdout)["corpus"]
    assert abs(corpus["YAAL"] - float(theirs["YAAL (CU)"])) < 6e-5  # scores.tsv has 4 decimals
    assert abs(corpus["YAAL_CA"] - float(theirs["YAAL (CA)"])) < 6e-5


@needs_oracles
def test_longform_latency_unit_spm_is_simulstreams(tmp_path):
    from test_oracles import FIXTURES, _omnisteval_longform, _subset_simulstream_fixture

    if not FIXTURES.exists():
        pytest.skip(f"fixtures not found at {FIXTURES}")
    d = _subset_simulstream_fixture(tmp_path, 2)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("detokenizer_type: simuleval\nlatency_unit: spm\n")
    theirs = _omnisteval_longform(tmp_path, d, d / "simulstream_log.jsonl",
                                  ["--hypothesis_format", "simulstream", "--simulstream_config_file", str(cfg)])
    ours = cli("score", str(d / "simulstream_log.jsonl"), "--segments", str(d / "ref_segments.yaml"),
               "--references", str(d / "references.txt"), "--latency-unit", "spm", "--computation-aware", "--json")
    assert ours.returncode == 0, ours.stderr
    corpus = json.loads(ours.stdout)["corpus"]
    assert abs(corpus["LongYAAL"] - theirs["LongYAAL (CU)"]) < 6e-5
    assert abs(corpus["LongYAAL_CA"] - theirs["LongYAAL (CA)"]) < 6e-5


def test_negative_longyaal_is_explained():
    from streamst.eval import longform

    segments = longform.make_segments([{"wav": "t.wav", "offset": 0.0, "duration": 2.0},
                                       {"wav": "t.wav", "offset": 20.0, "duration": 2.0}], ["a b", "c d"])
    # the words of the second segment came out at 1 s, long before its audio (20 s)
    talk = longform.Talk("t", "a b c d", [500.0, 900.0, 1000.0, 1100.0], None)
    res = longform.long_yaal(segments, [talk], "word", None, computation_aware=False)
    assert res.values["LongYAAL"] < 0
    assert any("negative by 2 of 4 words emitted before the start of the segment" in w for w in res.warnings)


def test_cues_end_at_sentences_but_not_after_a_title():
    from streamst.captions import group_cues

    words = [{"text": t, "emitted_ms": 400.0 * (i + 1), "start_ms": 300.0 * i, "end_ms": 300.0 * i + 250}
             for i, t in enumerate("And Mr. Dashwood left. He came back".split())]
    assert [c.text for c in group_cues(words)] == ["And Mr. Dashwood left.", "He came back"]
