"""`streamst eval` end to end on a hand-built MuST-C layout of the tiny corpus, scored by the tiny ASR model."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from streamst.cli import main
from streamst.eval import formats, runner

GAP_S = 0.6


def build_tiny_mustc(root: Path, corpus: list[tuple[Path, str]], talks: int = 2, per_talk: int = 3,
                     split: str = "tst-COMMON", first: int = 0) -> Path:
    """MuST-C v1 layout (pair en-en) whose talks are tiny-corpus sentences joined by short silences."""
    split_dir = root / "en-en" / "data" / split
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    yaml_lines, texts = [], []
    for t in range(talks):
        pieces, offset = [np.zeros(int(GAP_S * 16000), np.float32)], GAP_S
        for k in range(per_talk):
            wav, text = corpus[(first + t * per_talk + k) % len(corpus)]
            audio, rate = sf.read(wav, dtype="float32")
            assert rate == 16000
            duration = len(audio) / 16000
            yaml_lines.append(f"- {{duration: {duration:.6f}, offset: {offset:.6f}, speaker_id: spk{t}, "
                              f"wav: talk{t}.wav}}\n")
            texts.append(text)
            pieces += [audio, np.zeros(int(GAP_S * 16000), np.float32)]
            offset += duration + GAP_S
        sf.write(split_dir / "wav" / f"talk{t}.wav", np.concatenate(pieces), 16000, subtype="PCM_16")
    (split_dir / "txt" / f"{split}.yaml").write_text("".join(yaml_lines))
    (split_dir / "txt" / f"{split}.en").write_text("".join(t + "\n" for t in texts))
    return root


ROOT = Path(__file__).resolve().parents[1]
ORACLE_PY = ROOT / ".venv-oracles" / "bin" / "python"


@pytest.fixture(scope="module")
def mustc(tmp_path_factory, tiny_corpus) -> Path:
    """Two good talks of three sentences, one talk whose audio holds NaN, and one line with an empty reference."""
    root = build_tiny_mustc(tmp_path_factory.mktemp("mustc"), tiny_corpus, talks=2, per_talk=3, first=24)
    txt = root / "en-en" / "data" / "tst-COMMON" / "txt"
    wav_dir = root / "en-en" / "data" / "tst-COMMON" / "wav"
    bad = np.full(16000 * 2, np.nan, dtype=np.float32)
    sf.write(wav_dir / "broken.wav", bad, 16000, subtype="FLOAT")
    with open(txt / "tst-COMMON.yaml", "a") as f:
        f.write("- {duration: 1.0, offset: 0.5, speaker_id: spk9, wav: broken.wav}\n")
        f.write("- {duration: 1.0, offset: 4.0, speaker_id: spk1, wav: talk1.wav}\n")
    with open(txt / "tst-COMMON.en", "a") as f:
        f.write("a broken recording\n\n")
    return root


def _eval(mustc: Path, model: Path, out: Path, *extra: str) -> dict:
    code = main(["eval", "--mustc", str(mustc), "--pair", "en-en", "--model", str(model), "--task", "asr",
                 "--out", str(out), "--no-progress", *extra])
    assert code == 0
    return json.loads((out / "scores.json").read_text())


@pytest.fixture(scope="module")
def shortform(mustc, tiny_model_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("short")
    _eval(mustc, tiny_model_path, out, "--policy", "waitk:k=2")
    return out


def _score_cli(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["score", *args, "--computation-aware", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["corpus"]


def test_shortform_writes_every_output_and_skips_bad_segments(shortform):
    scores = json.loads((shortform / "scores.json").read_text())
    records = [json.loads(line) for line in (shortform / "instances.log").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(6))
    assert all(len(r["delays"]) == len(r["elapsed"]) == len(r["prediction"].split()) for r in records)
    assert all(e >= d for r in records for d, e in zip(r["delays"], r["elapsed"]))
    assert all(max(r["delays"]) <= r["source_length"] for r in records)
    skipped = [json.loads(line) for line in (shortform / "skipped.jsonl").read_text().splitlines()]
    reasons = " | ".join(s["reason"] for s in skipped)
    assert len(skipped) == 2 and "NaN" in reasons and "empty" in reasons
    assert scores["skipped"] == 2 and scores["instances"] == 6 and scores["mode"] == "shortform"
    # the model was trained on these sentences: it must mostly get them right
    assert scores["scores"]["WER"] < 40 and scores["scores"]["BLEU"] > 30
    for key in ("AL", "LAAL", "YAAL", "DAL", "AP", "ATD"):
        assert scores["scores"][key] is not None
        if key != "YAAL":
            assert scores["scores"][key + "_CA"] is not None
    # YAAL leaves out an instance whose first word comes at or after the source's end (OmniSTEval): with compute
    # counted, that is every instance on a slow or busy machine, and then there is no YAAL_CA
    assert (scores["scores"]["YAAL_CA"] is not None) == any(r["elapsed"][0] < r["source_length"] for r in records)
    assert scores["scores"]["LAAL_CA"] >= scores["scores"]["LAAL"] > 0
    assert scores["signatures"]["BLEU"].startswith("nrefs:1|case:mixed")
    assert 0 < scores["RTF"] and scores["audio_hours"] > 0 and scores["policy"].startswith("waitk:k=2")
    assert scores["git_revision"] and "cores" in scores["machine"]
    header, values = (shortform / "scores.tsv").read_text().splitlines()
    row = dict(zip(header.split("\t"), values.split("\t")))
    assert float(row["LAAL"]) == pytest.approx(scores["scores"]["LAAL"], abs=1e-3) and row["mode"] == "shortform"
    assert (shortform / "delays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_streamst_score_gives_the_numbers_of_scores_json(shortform, capsys):
    scores = json.loads((shortform / "scores.json").read_text())["scores"]
    assert _score_cli(capsys, str(shortform / "instances.log")) == scores


@pytest.mark.skipif(not ORACLE_PY.exists(), reason=".venv-oracles missing: run .ci/oracles.sh")
@pytest.mark.parametrize("computation_aware", [False, True])
def test_simuleval_score_only_agrees(shortform, tmp_path, computation_aware):
    """The real `simuleval --score-only` (1.1.4, whose --computation-aware puts the CA values in every column)."""
    shutil.copy(shortform / "instances.log", tmp_path / "instances.log")
    (tmp_path / "config.yaml").write_text("source_type: speech\ntarget_type: text\n")
    script = ("import sys, pandas; pandas.set_option('display.max_columns', None); "
              "pandas.set_option('display.width', 100000); from simuleval.cli import main; "
              f"sys.argv = ['simuleval', '--score-only', '--output', {str(tmp_path)!r}, '--quality-metrics', 'BLEU', "
              "'--latency-metrics', 'AL', 'LAAL', 'AP', 'DAL', 'ATD', 'StartOffset', 'EndOffset'"
              + (", '--computation-aware']" if computation_aware else "]") + "; main()")
    proc = subprocess.run([str(ORACLE_PY), "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split() for line in proc.stdout.strip().splitlines()[-2:]]
    theirs = dict(zip(lines[0], map(float, lines[1][1:])))
    ours = json.loads((shortform / "scores.json").read_text())["scores"]
    assert theirs["BLEU"] == pytest.approx(ours["BLEU"], abs=1e-3)
    suffix = "_CA" if computation_aware else ""
    for key in ("AL", "LAAL", "AP", "DAL", "ATD", "StartOffset", "EndOffset"):
        assert theirs[key] == pytest.approx(ours[key + suffix], abs=1e-3), key


def test_a_killed_run_resumes_without_redoing_finished_segments(shortform, mustc, tiny_model_path, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(shortform, out)
    lines = (out / "instances.log").read_text().splitlines(keepends=True)
    # killed while writing the third record: two whole lines and a torn one
    (out / "instances.log").write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    (out / "scores.json").unlink()
    _eval(mustc, tiny_model_path, out, "--policy", "waitk:k=2")
    resumed = (out / "instances.log").read_text().splitlines(keepends=True)
    assert [json.loads(x)["index"] for x in resumed] == list(range(6))
    # wall-clock elapsed times differ between runs: identical lines mean the first two were not redone
    assert resumed[:2] == lines[:2]
    assert resumed[2] != lines[2]
    assert [json.loads(x)["delays"] for x in resumed] == [json.loads(x)["delays"] for x in lines]


def test_resume_refuses_other_settings(shortform, mustc, tiny_model_path, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(shortform, out)
    with pytest.raises(ValueError, match="policy"):
        runner.evaluate(runner.EvalConfig(str(mustc.resolve()), "en-en", "tst-COMMON", str(tiny_model_path),
                                          "waitk:k=5,unit=chunks", task="asr"), out, progress=False)


def test_workers_give_the_same_output_in_the_same_order(shortform, mustc, tiny_model_path, tmp_path):
    _eval(mustc, tiny_model_path, tmp_path, "--policy", "waitk:k=2", "--workers", "2")
    ours = [json.loads(x) for x in (tmp_path / "instances.log").read_text().splitlines()]
    single = [json.loads(x) for x in (shortform / "instances.log").read_text().splitlines()]
    assert [(r["index"], r["prediction"], r["delays"]) for r in ours] == \
        [(r["index"], r["prediction"], r["delays"]) for r in single]


def test_longform_streams_whole_talks_and_scores_like_streamst_score(mustc, tiny_model_path, tmp_path, capsys):
    scores = _eval(mustc, tiny_model_path, tmp_path, "--policy", "streamatt:frames=4", "--longform", "--limit", "1")
    assert scores["mode"] == "longform" and scores["instances"] == 1
    for key in ("StreamLAAL", "StreamLAAL_CA", "LongYAAL", "LongYAAL_CA", "BLEU", "chrF", "WER"):
        assert scores["scores"][key] is not None, key
    outputs, warnings = formats.read_simulstream(tmp_path / "simulstream.log")
    record = json.loads((tmp_path / "instances.log").read_text())
    assert not warnings and len(outputs) == 1 and outputs[0].text == record["prediction"]
    assert [d * 1000 for d in outputs[0].ideal_delays] == pytest.approx(record["delays"])
    steps = [json.loads(x) for x in (tmp_path / "simulstream.log").read_text().splitlines()[1:]]
    assert len(steps) == -(-record["source_length"] // 320)  # one line per chunk
    assert sum(s["computation_time"] for s in steps) * 1000 == pytest.approx(record["compute_ms"], rel=1e-6)
    assert len((tmp_path / "references.txt").read_text().splitlines()) == 3
    theirs = _score_cli(capsys, str(tmp_path / "simulstream.log"), "--segments", str(tmp_path / "segments.yaml"),
                        "--references", str(tmp_path / "references.txt"))
    assert theirs == scores["scores"]
    assert (tmp_path / "delays.png").stat().st_size > 1000
