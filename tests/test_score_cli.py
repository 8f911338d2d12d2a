"""`streamst score` end to end through the CLI dispatcher: JSON shape, nulls with warnings, malformed lines."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from streamst.cli import main
from streamst.eval.formats import instance_record, write_instances

FIXTURES = Path("/work/shared/fixtures/omnisteval-examples")


def _log(tmp_path, records, extra_lines=()):
    path = tmp_path / "instances.log"
    write_instances(path, records)
    with open(path, "a") as f:
        for line in extra_lines:
            f.write(line + "\n")
    return path


def _run(capsys, *argv):
    rc = main(["score", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_json_corpus_and_per_instance(tmp_path, capsys):
    records = [
        instance_record(0, "das ist ein Haus".split(), [1000, 2000, 3000, 3000], [1100, 2300, 3400, 3500], 3000,
                        "das ist ein großes Haus", source="a.wav"),
        instance_record(1, [], [], [], 2000, "leer"),
        instance_record(2, ["x"], [0], [10], 0, "x"),
    ]
    path = _log(tmp_path, records, ["{broken json"])
    rc, out, err = _run(capsys, path, "--json", "--per-instance", "--computation-aware")
    assert rc == 0
    data = json.loads(out)
    corpus, inst = data["corpus"], data["instances"]
    assert corpus["AL"] == pytest.approx(1400) and corpus["YAAL"] == pytest.approx(1200)
    assert corpus["DAL"] == pytest.approx(1312.5)   # instances 1 (empty) and 2 (zero source) are skipped
    assert {"AL_CA", "LAAL_CA", "YAAL_CA", "ATD_CA", "BLEU", "chrF", "WER"} <= corpus.keys()
    assert [i["index"] for i in inst] == [0, 1, 2]
    assert inst[1]["AL"] is None and inst[2]["AL"] is None and inst[2]["StartOffset"] == 0
    assert "instances.log:4: malformed line skipped" in err
    assert "zero-length source" in err and "no delays" in err
    assert "nrefs:1" in data["signatures"]["BLEU"]


def test_references_file_and_char_unit(tmp_path, capsys):
    path = _log(tmp_path, [instance_record(0, list("我们回家"), [500, 1000, 1500, 2000], [600, 1100, 1600, 2100], 2000, None)])
    refs = tmp_path / "refs.txt"
    refs.write_text("我们回家了\n", encoding="utf-8")
    rc, out, _ = _run(capsys, path, "--references", refs, "--latency-unit", "char", "--json")
    corpus = json.loads(out)["corpus"]
    # R = 5 chars: S/R = 400: (500 + 600 + 700 + 800) / 4
    assert corpus["AL"] == pytest.approx(650.0)
    assert "CER" in corpus and "instances" not in json.loads(out)


def test_reference_count_mismatch_is_a_clear_error(tmp_path, capsys):
    path = _log(tmp_path, [instance_record(0, ["a"], [1], [1], 10, "a")])
    refs = tmp_path / "refs.txt"
    refs.write_text("a\nb\n")
    rc, _, err = _run(capsys, path, "--references", refs)
    assert rc == 2 and "2 references for 1 instances" in err


def test_text_output(tmp_path, capsys):
    path = _log(tmp_path, [instance_record(0, "a b".split(), [100, 200], [150, 250], 300, "a b")])
    rc, out, _ = _run(capsys, path)
    assert rc == 0 and out.splitlines()[0].split()[0] == "AL" and "BLEU signature:" in out


@pytest.mark.skipif(not FIXTURES.exists(), reason="shared fixtures not present")
def test_longform_speech_fixture_cli(tmp_path, capsys):
    d = FIXTURES / "speech_resegmentation_example"
    rc, out, err = _run(capsys, d / "instances.log", "--segments", d / "ref_segments.yaml", "--references",
                        d / "references.txt", "--computation-aware", "--lang", "de", "--json")
    corpus = json.loads(out)["corpus"]
    assert f"{corpus['LongYAAL']:.4f}" == "2934.0779" and f"{corpus['LongYAAL_CA']:.4f}" == "5873.8065"
    assert f"{corpus['BLEU']:.4f}" == "22.6566"
    assert 5000 < corpus["StreamLAAL_CA"] < 7000    # 6.09 s with the OmniSTEval fix (METRICS.md §8)
    rc, out, _ = _run(capsys, d / "instances.log", "--segments", d / "ref_segments.yaml", "--references",
                      d / "references.txt", "--computation-aware", "--no-fix-emission-ca", "--json")
    assert json.loads(out)["corpus"]["StreamLAAL_CA"] > 100_000   # raw cumulative elapsed: hundreds of seconds


def test_score_does_not_import_torch():
    code = "import sys; from streamst.eval import score_cli, longform, formats, quality; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
