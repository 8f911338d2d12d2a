"""Pure-formula tests of streamst.eval.latency (no oracle needed): METRICS.md worked example and edge cases."""
import pytest

from streamst.eval import latency as L

DELAYS = [1000, 2000, 3000, 3000]


def test_worked_example_metrics_md_3_7b():
    v = L.score_instance(DELAYS, 3000, 5).values
    assert v["AL"] == pytest.approx(1400)
    assert v["LAAL"] == pytest.approx(1400)
    assert v["YAAL"] == pytest.approx(1200)
    assert v["AP"] == pytest.approx(0.6)
    assert v["DAL"] == pytest.approx(1312.5)
    assert v["ATD"] == pytest.approx(1550)
    assert v["StartOffset"] == 1000 and v["EndOffset"] == 0
    assert L.average_lagging(DELAYS, 3000, 4) == pytest.approx(1250)   # AL with R := n
    assert L.average_proportion(DELAYS, 3000, 4) == pytest.approx(0.75)


def test_reference_length_counts_like_simuleval():
    assert L.reference_length(" a b c", "word", 9) == 4
    assert L.reference_length("a  b   c ", "word", 9) == 7
    assert L.reference_length("", "word", 9) == 1
    assert L.reference_length(None, "word", 9) == 9
    assert L.reference_length(" 我 们 ", "char", 9) == 3
    with pytest.raises(ValueError):
        L.reference_length("x", "spm", 1)


def test_first_unit_after_source_end_al_returns_it_yaal_skips():
    d = [3500, 3600]
    assert L.average_lagging(d, 3000, 2) == 3500
    r = L.score_instance(d, 3000, 2)
    assert r.values["YAAL"] is None and "end of the source" in r.reasons["YAAL"]


def test_zero_length_source_is_skipped_not_crashing():
    r = L.score_instance([0, 0], 0, 2)
    for key in ("AL", "LAAL", "AP", "DAL", "YAAL"):
        assert r.values[key] is None, key
    assert r.reasons["AL"] == "zero-length source"
    assert r.values["ATD"] is not None   # ATD ignores the source length


def test_empty_prediction_and_missing_elapsed():
    r = L.score_instance([], 3000, 4, elapsed=None, computation_aware=True)
    assert all(v is None for v in r.values.values())
    r = L.score_instance([100, 200], 3000, 4, elapsed=None, computation_aware=True)
    assert r.values["AL"] is not None and r.values["AL_CA"] is None and r.reasons["AL_CA"] == "no elapsed"


def test_plain_columns_never_use_elapsed():
    """SimulEval 1.1.4 with --computation-aware made AL == AL_CA; we keep them apart (fixed main)."""
    r = L.score_instance(DELAYS, 3000, 5, elapsed=[1500, 2600, 3700, 3900], computation_aware=True)
    assert r.values["AL"] == pytest.approx(1400)
    assert r.values["AL_CA"] != r.values["AL"]


def test_char_level_empty_reference_al_undefined_laal_defined():
    r = L.score_instance([100, 200], 3000, 0)
    assert r.values["AL"] is None and r.values["AP"] is None
    assert r.values["LAAL"] is not None and r.values["DAL"] is not None


def test_over_generation_is_rewarded_by_al_not_by_laal():
    d = [100 * i for i in range(1, 21)]
    al, laal = L.average_lagging(d, 3000, 2), L.length_adaptive_average_lagging(d, 3000, 2)
    assert al < 0 and laal > al
    assert laal == pytest.approx(L.average_lagging(d, 3000, 20))


def test_corpus_mean_ignores_undefined_and_none_when_all_undefined():
    assert L.corpus_mean([1.0, None, 3.0]) == 2.0
    assert L.corpus_mean([None, None]) is None
