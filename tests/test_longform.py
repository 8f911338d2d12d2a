"""Long-form pieces without the oracles: CA fix, mwer re-segmentation, SoftSegmenter, simulstream replay, fixtures."""
import json
from pathlib import Path

import pytest

from streamst.eval import formats, longform
from streamst.eval.resegment import align_texts
from streamst.eval.softsegmenter import soft_segment

FIXTURES = Path("/work/shared/fixtures/omnisteval-examples")
needs_fixtures = pytest.mark.skipif(not FIXTURES.exists(), reason="shared fixtures not present")


def test_fix_emission_ca_is_incremental_and_monotone():
    delays = [1000, 2000, 3000]
    elapsed = [1500, 4000, 4100]          # cumulative wall clock
    # ca'_1 = 4000 - 1500 + 1000 = 3500; ca'_2 = max(4100 - 4000 + 2000, 3500) = 3500
    assert longform.fix_emission_ca(delays, elapsed) == [1500, 3500, 3500]


def test_mwer_resegmentation_splits_at_sentence_boundaries_case_insensitively():
    refs = ["the cat sat", "on the mat", "Thank you"]
    pieces = align_texts(refs, "The cat sat down on the mat . thank you")
    # mweralign gives the same: on a tie the insertion "down" stays with the earlier sentence
    assert pieces == [["The", "cat", "sat", "down"], ["on", "the", "mat", "."], ["thank", "you"]]
    assert align_texts(refs, "") == [[], [], []]


def test_softsegmenter_assigns_words_to_similar_reference_words():
    ref = ["hello", "world", "good", "morning"]
    seg = [0, 0, 1, 1]
    hyp = ["helo", "world", "extra", "goody", "mornin"]
    # "extra" shares an "r" with "world" and nothing with "good": it joins the previous segment
    assert soft_segment(ref, seg, hyp, 2) == [[0, 1, 2], [3, 4]]


def test_simulstream_replay_handles_deleted_tokens_and_word_updates(tmp_path):
    lines = [
        {"id": 0, "metadata": {"wav_name": "/x/talk1.wav"}},
        {"id": 0, "total_audio_processed": 1.0, "computation_time": 0.5, "generated_tokens": ["\u2581Hal", "lo"], "deleted_tokens": []},
        {"id": 0, "total_audio_processed": 2.0, "computation_time": 0.1, "generated_tokens": ["\u2581Welt"], "deleted_tokens": []},
        {"id": 0, "total_audio_processed": 3.0, "computation_time": 0.2, "generated_tokens": ["\u2581Leute", "!"], "deleted_tokens": ["\u2581Welt"]},
        {"id": 0, "total_audio_processed": 4.0, "computation_time": 0.3, "generated_tokens": ["n"], "deleted_tokens": ["!"]},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "not json\n")
    outs, warnings = formats.read_simulstream(path, "word", "auto")
    assert len(warnings) == 1 and ":6:" in warnings[0]
    (out,) = outs
    assert out.name == "talk1" and out.text == "Hallo Leuten"
    assert out.ideal_delays == [1.0, 4.0]            # the updated last word takes the latest step's delay
    assert out.ca_delays == [1.5, 4.3]


@needs_fixtures
def test_speech_fixture_reproduces_omnisteval_stored_longyaal():
    """segmentation_output/scores.tsv was written by `omnisteval longform --lang de --fix_simuleval_emission_ca`."""
    d = FIXTURES / "speech_resegmentation_example"
    stored = dict(line.split("\t") for line in (d / "segmentation_output" / "scores.tsv").read_text().splitlines()[1:])
    log = formats.read_instances(d / "instances.log")
    assert log.warnings == [] and len(log.records) == 5
    segments = longform.make_segments(formats.read_segments(d / "ref_segments.yaml"), formats.read_references(d / "references.txt"))
    res = longform.long_yaal(segments, longform.talks_from_instances(log.records, fix_ca=True), "word", "de")
    assert f"{res.values['LongYAAL']:.4f}" == stored["LongYAAL (CU)"]
    assert f"{res.values['LongYAAL_CA']:.4f}" == stored["LongYAAL (CA)"]
    raw = longform.long_yaal(segments, longform.talks_from_instances(log.records, fix_ca=False), "word", "de")
    assert raw.values["LongYAAL_CA"] > res.values["LongYAAL_CA"] + 1000   # cumulative elapsed inflates CA


def test_missing_talk_is_an_error():
    segs = [longform.Segment("a.wav", 0.0, 2.0, "hello world")]
    with pytest.raises(ValueError, match="missing"):
        longform.stream_laal(segs, [longform.Talk("b.wav", "hello", [100.0])])


def test_stream_laal_on_a_tiny_talk_by_hand():
    segs = [longform.Segment("t.wav", 0.0, 2.0, "a b"), longform.Segment("t.wav", 2.0, 2.0, "c d")]
    talk = longform.Talk("t.wav", "a b c d", [500.0, 1500.0, 2500.0, 4000.0], [600.0, 1600.0, 2600.0, 4100.0])
    res = longform.stream_laal(segs, [talk], "word", True)
    # segment 1: delays 0.5, 1.5 s, S=2, R=2: (0.5 + 0.5)/2 = 0.5 s; segment 2: 0.5, 2.0 -> (0.5 + 1.0)/2 = 0.75 s
    assert res.values["StreamLAAL"] == pytest.approx(625.0)
    assert res.values["StreamLAAL_CA"] == pytest.approx(725.0)
