"""`streamst sweep` on the tiny model over a tiny MuST-C layout: table, markdown, plot, offline reference."""
from __future__ import annotations

import json

import pytest

from streamst.cli import main
from streamst.eval import sweep
from test_eval_runner import build_tiny_mustc


def test_sweep_writes_table_markdown_and_plot(tmp_path, tiny_corpus, tiny_model_path, capsys):
    mustc = build_tiny_mustc(tmp_path / "mustc", tiny_corpus, talks=1, per_talk=3, first=3)
    out = tmp_path / "sweep"
    code = main(["sweep", "--mustc", str(mustc), "--pair", "en-en", "--model", str(tiny_model_path),
                 "--policies", "waitk:k=1; waitk:k=4 ;alignatt:frames=4;waitk:k=1", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    header, *lines = (out / "sweep.tsv").read_text().splitlines()
    assert header.split("\t") == ["policy", "WER", "AL", "LAAL", "YAAL", "AL_CA", "LAAL_CA", "YAAL_CA", "RTF"]
    rows = {line.split("\t")[0].split(",")[0]: dict(zip(header.split("\t"), line.split("\t"))) for line in lines}
    assert list(rows) == ["waitk:k=1", "waitk:k=4", "alignatt:frames=4", "offline"]  # duplicate dropped
    laal = {k: float(r["LAAL"]) for k, r in rows.items()}
    # waiting longer cannot write earlier; offline writes everything at the end of the source
    assert laal["waitk:k=1"] <= laal["waitk:k=4"] <= laal["offline"]
    assert laal["alignatt:frames=4"] <= laal["offline"]
    assert all(float(r["LAAL_CA"]) >= float(r["LAAL"]) for r in rows.values())
    # each row is the scores.json of a full `streamst eval` run kept in its own folder
    for spec_dir in [p for p in out.iterdir() if p.is_dir()]:
        scores = json.loads((spec_dir / "scores.json").read_text())
        row = next(r for r in rows.values() if r["policy"] == scores["policy"])
        assert float(row["WER"]) == pytest.approx(scores["scores"]["WER"])
    assert float(rows["offline"]["WER"]) < 60  # the model was trained on these sentences (random text: ~100)
    markdown = (out / "sweep.md").read_text()
    assert markdown.startswith("| policy | WER | AL | LAAL |") and markdown.count("\n") == 6
    assert markdown in capsys.readouterr().out
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_rejects_a_bad_policy_before_running(tmp_path):
    with pytest.raises(ValueError, match="valid"):
        sweep.parse_policies("waitk:k=1;waitk:kk=2")
    with pytest.raises(ValueError, match="no policy"):
        sweep.parse_policies(" ; ")
