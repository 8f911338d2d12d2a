"""The cascade (`streamst/cascade.py`): a recogniser's committed words translated sentence by sentence by apertium,
through `streamst translate --cascade` and `streamst serve --cascade`. Real models, real apertium."""
from __future__ import annotations

import asyncio
import csv
import shutil
from pathlib import Path

import pytest

from streamst.cascade import Apertium, Cascade, CascadeState, SegmentRule, text_translator
from streamst.events import Partial, Word

needs_apertium = pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium is not installed (apt)")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
REFERENCES = Path(__file__).resolve().parents[2] / "shared" / "realspeech" / "librivox_translations.tsv"


def test_segments_end_at_sentences_long_clauses_and_a_word_cap():
    rule = SegmentRule(clause_words=3, max_words=5)
    assert rule.boundaries("He came. Then".split()) == [2]
    assert rule.boundaries('She said "yes." and'.split()) == [3]  # a closing quote after the full stop
    assert rule.boundaries("a, b c, d".split()) == [3]  # the first comma closes too short a clause
    assert rule.boundaries("one two three four five six".split()) == [5]
    assert rule.boundaries([]) == []


@needs_apertium
def test_a_segment_is_translated_once_it_ends_and_the_rest_at_the_end():
    cascade = Cascade(Apertium())
    words = [Word(t, 100.0 * i, 10.0 * i, 100.0 * i, 100.0 * i + 90) for i, t in
             enumerate("He was not an ill disposed young man. The house".split())]
    out, state = cascade.step(CascadeState(), words[:3] + [Partial("an", 300.0)])
    assert out == [Partial("He was not an", 300.0)] and len(state.pending) == 3  # nothing translatable yet
    out, state = cascade.step(state, words[3:])
    spanish = [e for e in out if isinstance(e, Word)]
    assert " ".join(w.text for w in spanish) == Apertium().translate(["He was not an ill disposed young man."])[0]
    assert {w.emitted_ms for w in spanish} == {700.0}  # when its last English word was committed
    assert all(w.compute_ms >= 70.0 for w in spanish)  # the recogniser's compute plus apertium's
    assert spanish[0].start_ms == 0.0 and spanish[-1].end_ms == pytest.approx(790.0)
    assert [w.text for w in state.pending] == ["The", "house"] and out[-1] == Partial("The house an", 300.0)
    out, state = cascade.step(state, [], final=True)
    assert [w.text for w in out if isinstance(w, Word)] == Apertium().translate(["The house"])[0].split()
    assert not state.pending and not state.partial and out[-1].text == ""


def test_unknown_translators_and_languages_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown text translator 'moses'"):
        text_translator("moses")
    with pytest.raises(ValueError, match="into es, not 'de'"):
        text_translator("apertium:de")


@needs_apertium
@pytest.mark.skipif(not LIBRIVOX.is_dir() or not REFERENCES.is_file(), reason="needs pocketsphinx-testdata and "
                    "../shared/realspeech")
def test_translate_cascade_on_real_speech_beats_the_chrf_target(tmp_path):
    """`streamst translate --cascade apertium` on the five LibriVox clips: chrF >= 40 against the Spanish
    references (measured 43.0 with AlignAtt: bench/cascade.py)."""
    import sacrebleu

    from streamst.cli import main

    with REFERENCES.open(newline="") as f:
        refs = {row["file"]: row["es"] for row in csv.DictReader(f, delimiter="\t")}
    wavs = [LIBRIVOX / f"{name}.wav" for name in sorted(refs)]
    assert main(["translate", "--cascade", "apertium", *map(str, wavs), "--out-dir", str(tmp_path)]) == 0
    hyps = [(tmp_path / f"{w.stem}.txt").read_text().strip() for w in wavs]
    chrf = sacrebleu.corpus_chrf(hyps, [[refs[w.stem] for w in wavs]]).score
    assert chrf >= 40.0, (chrf, hyps)


@needs_apertium
def test_serve_cascade_sends_what_the_cascade_writes_offline(tiny_model_path, tiny_corpus, tmp_path):
    """`streamst serve --cascade apertium` over the tiny model: ready says en->es translation, and the stable
    words are the lone Session's words through the same cascade."""
    from streamst.checkpoint import load_model
    from streamst.commands.files import stream_file as offline
    from streamst.policies import parse_policy
    from streamst.server.replay import stream_file
    from test_server import ServeProcess

    wav = Path(tiny_corpus[0][0])
    words, _ = offline(load_model(str(tiny_model_path)), parse_policy("waitk:k=2"), wav, cascade=Cascade(Apertium()))
    assert words
    srv = ServeProcess(tmp_path, tiny_model_path, "--cascade", "apertium", "--policy", "waitk:k=2",
                       "--catch-up-lag-s", "inf")
    try:
        result = asyncio.run(asyncio.wait_for(stream_file(srv.url, wav), 120))
    finally:
        assert srv.terminate() == 0, srv.output()
    assert result.ready["task"] == "st" and result.ready["target_lang"] == "es"
    assert result.ready["model"].endswith("+apertium")
    assert [w["text"] for w in result.words] == [w.text for w in words]
    assert result.done["reason"] == "eos" and result.done["words"] == len(words)
