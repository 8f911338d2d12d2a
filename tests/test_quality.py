"""BLEU/chrF through sacrebleu and our WER/CER normalisation."""
import pytest

from streamst.eval import quality


def test_bleu_and_chrf_with_signatures():
    hyps = ["das ist ein haus", "wir gehen nach hause"]
    refs = ["das ist ein Haus", "wir gehen heute nach Hause"]
    b = quality.bleu(hyps, refs)
    c = quality.chrf(hyps, refs)
    assert 0 < b.score < 100 and "tok:13a" in b.signature
    assert 0 < c.score < 100 and "nc:6" in c.signature
    assert quality.bleu(refs, refs).score == pytest.approx(100)


def test_edit_distance_matches_known_values():
    assert quality.edit_distance(list("kitten"), list("sitting")) == 3
    assert quality.edit_distance([], list("abc")) == 3
    assert quality.edit_distance(list("abc"), []) == 3
    assert quality.edit_distance(list("flaw"), list("lawn")) == 2


def test_wer_normalises_case_and_punctuation():
    assert quality.wer(["Hello, World!"], ["hello world"]) == 0.0
    assert quality.wer(["hello there world"], ["hello world"]) == pytest.approx(50.0)
    assert quality.wer(["x"], [""]) is None


def test_cer_ignores_spaces():
    assert quality.cer(["我 们"], ["我们"]) == 0.0
    assert quality.cer(["我"], ["我们"]) == pytest.approx(50.0)
