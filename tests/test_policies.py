"""Policy decisions pinned on hand-made hypotheses and attention matrices."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamst.policies import Candidate, Decision, PolicyView, parse_policy
from streamst.policies.attention import ZSCORE_MIN_TOKENS, zscore_frames
from streamst.policies.streamatt import ends_sentence, whole_word_tokens

W = "\u2581"


def att(rows, layers: int = 1, heads: int = 1) -> np.ndarray:
    """[layers, heads, tokens, frames] with every layer and head equal to `rows` [tokens, frames]."""
    m = np.asarray(rows, dtype=np.float32)
    return np.broadcast_to(m, (layers, heads) + m.shape).copy()


def one_hot_rows(aligned: list[int], frames: int, peak: float = 0.6) -> np.ndarray:
    """Rows that put `peak` on the given frame and spread the rest evenly."""
    rows = np.full((len(aligned), frames), (1 - peak) / (frames - 1), dtype=np.float32)
    for i, f in enumerate(aligned):
        rows[i, f] = peak
    return rows


def view(pieces, attention=None, *, committed=(), frames=None, finished=False, ended=False, chunks=1,
         prefix_pieces=(), prefix_attention=None, frame_ms=40.0, source_words=None) -> PolicyView:
    if frames is None:
        frames = attention.shape[-1] if attention is not None else 0
    return PolicyView(
        candidate=Candidate(list(range(len(pieces))), list(pieces), attention, ended),
        committed=list(committed), frames=frames, frame_ms=frame_ms, source_ms=frames * frame_ms,
        chunks=chunks, finished=finished, source_words=source_words,
        prefix_pieces=tuple(prefix_pieces), prefix_attention=prefix_attention,
    )


def decide(spec: str, v: PolicyView, state=None):
    policy = parse_policy(spec)
    return policy.decide(v, policy.init_state() if state is None else state)


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("spec", [
    "waitk:k=5", "la:n=2", "edatt:alpha=0.2,lambda=2", "alignatt:frames=4", "streamatt:frames=4,history_words=20",
    "edatt:alpha=0.3,lambda=3,layer=0,heads=0+2,norm=none,exclude_last=1",
    "alignatt:frames=2,heads=max,exclude_last=1,zscore=1", "streamatt:history=punct,punct_max_words=40", "offline",
])
def test_spec_round_trips(spec):
    policy = parse_policy(spec)
    assert parse_policy(policy.spec()) == policy


def test_edatt_spec_spells_lambda_without_underscore():
    policy = parse_policy("edatt:lambda=3")
    assert policy.lambda_ == 3
    assert "lambda=3" in policy.spec() and "lambda_" not in policy.spec()


@pytest.mark.parametrize("spec,listed", [
    ("edatt:lamda=2", ["alpha=0.2", "lambda=2", "norm='l2'"]),
    ("alignatt:frames=4,beam=4", ["frames=4", "exclude_last=False", "zscore=False"]),  # beam is a session option
    ("streamatt:words=3", ["history_words=20", "history='words'", "max_memory_s=30.0"]),
    ("la:k=2", ["n=2"]),
])
def test_bad_key_lists_valid_keys(spec, listed):
    with pytest.raises(ValueError, match="valid keys") as err:
        parse_policy(spec)
    for key in listed:
        assert key in str(err.value)


@pytest.mark.parametrize("spec", [
    "la:n=0", "edatt:norm=l1", "edatt:lambda=0", "edatt:alpha=x", "alignatt:frames=0", "alignatt:heads=first",
    "streamatt:history=sentences", "streamatt:max_memory_s=-1", "waitk:unit=second",
])
def test_bad_values_are_value_errors(spec):
    with pytest.raises(ValueError, match="policy"):
        parse_policy(spec)


# ---------------------------------------------------------------- local agreement

def test_la_waits_for_a_second_hypothesis_then_commits_the_agreed_words():
    first = view([W + "the", W + "ca", "t", W + "sat", W + "on"])
    d, state = decide("la:n=2", first)
    assert d == Decision(0)
    second = view([W + "the", W + "ca", "t", W + "sit", W + "on", W + "the"])
    d, state = parse_policy("la:n=2").decide(second, state)
    assert d.tokens == 3  # "the", then the two pieces of "cat"; "sat" / "sit" disagree


def test_la_aligns_by_absolute_word_position_after_a_commit():
    policy = parse_policy("la:n=2")
    s = policy.init_state()
    _, s = policy.decide(view([W + "the", W + "ca", "t", W + "sit", W + "on", W + "the"]), s)
    # "the cat" was committed by the session; the new candidate continues after it
    d, s = policy.decide(view([W + "sit", W + "on", W + "the", W + "mat"], committed=["the", "cat"]), s)
    # positions 2, 3 agree ("sit on"); position 4 was an incomplete word before, so it does not count yet
    assert d.tokens == 2
    d, s = policy.decide(view([W + "the", W + "mat", W + "."], committed=["the", "cat", "sit", "on"]), s)
    assert d.tokens == 1  # "the" now agrees; "mat" was incomplete in the previous hypothesis


def test_la_never_commits_the_last_word_mid_stream():
    policy = parse_policy("la:n=2")
    s = policy.init_state()
    pieces = [W + "hel", "lo", W + "wor", "ld"]
    _, s = policy.decide(view(pieces), s)
    d, s = policy.decide(view(pieces), s)
    assert d.tokens == 2  # "hello" only: "world" may still grow


def test_la_first_word_disagreement_commits_nothing():
    policy = parse_policy("la:n=2")
    _, s = policy.decide(view([W + "a", W + "b", W + "c"]), policy.init_state())
    d, _ = policy.decide(view([W + "x", W + "b", W + "c"]), s)
    assert d.tokens == 0


def test_la_n3_needs_three_agreeing_hypotheses():
    policy = parse_policy("la:n=3")
    s = policy.init_state()
    pieces = [W + "a", W + "b", W + "c"]
    decisions = []
    for _ in range(3):
        d, s = policy.decide(view(pieces), s)
        decisions.append(d.tokens)
    assert decisions == [0, 0, 2]
    assert len(s) == 2  # the last n-1 hypotheses


def test_la_n1_commits_every_complete_word():
    d, _ = decide("la:n=1", view([W + "a", W + "b", "c", W + "d"]))
    assert d.tokens == 3


def test_la_end_of_stream_and_no_tokens():
    d, s = decide("la:n=2", view([W + "a", W + "b"], finished=True))
    assert d.tokens == 2 and s == ()
    d, _ = decide("la:n=2", view([]))
    assert d.tokens == 0


# ---------------------------------------------------------------- EDAtt

def test_edatt_stops_at_first_token_with_mass_on_the_last_frames():
    rows = [
        [0.5, 0.3, 0.1, 0.05, 0.05],   # raw mass on the last 2 frames: 0.10
        [0.1, 0.6, 0.2, 0.05, 0.05],   # 0.10
        [0.0, 0.1, 0.3, 0.3, 0.3],     # 0.60 -> stop
        [0.9, 0.05, 0.05, 0.0, 0.0],   # would pass, but emission stopped before
    ]
    d, _ = decide("edatt:alpha=0.2,lambda=2,norm=none", view([W + "a"] * 4, att(rows)))
    assert d.tokens == 2


def test_edatt_threshold_is_inclusive_at_the_boundary():
    rows = [[0.5, 0.25, 0.125, 0.125]]  # dyadic: the mass on the last 2 frames is exactly 0.25
    assert decide("edatt:alpha=0.25,lambda=2,norm=none", view([W + "a"], att(rows)))[0].tokens == 0
    assert decide("edatt:alpha=0.2500001,lambda=2,norm=none", view([W + "a"], att(rows)))[0].tokens == 1


def test_edatt_l2_normalisation_is_the_default_and_raises_the_mass():
    rows = [[0.7, 0.15, 0.075, 0.075]]  # raw mass 0.15; the row's L2 norm is 0.724, so normalised mass 0.207
    assert decide("edatt:alpha=0.2,lambda=2,norm=none", view([W + "a"], att(rows)))[0].tokens == 1
    assert decide("edatt:alpha=0.2,lambda=2", view([W + "a"], att(rows)))[0].tokens == 0


def test_edatt_lambda_wider_than_memory_sums_all_frames():
    rows = [[0.5, 0.5]]
    assert decide("edatt:alpha=0.9,lambda=5,norm=none", view([W + "a"], att(rows)))[0].tokens == 0


def test_edatt_layer_heads_and_sink_frame():
    a = np.zeros((2, 2, 1, 4), dtype=np.float32)
    a[0, :, 0] = [0.9, 0.1, 0.0, 0.0]        # layer 0: early frames
    a[1, 0, 0] = [0.0, 0.0, 0.0, 1.0]        # layer 1 head 0: all on the last frame
    a[1, 1, 0] = [1.0, 0.0, 0.0, 0.0]        # layer 1 head 1: first frame
    v = view([W + "a"], a)
    assert decide("edatt:alpha=0.2,lambda=1,norm=none", v)[0].tokens == 0            # last layer, mean: 0.5
    assert decide("edatt:alpha=0.2,lambda=1,norm=none,layer=0", v)[0].tokens == 1
    assert decide("edatt:alpha=0.2,lambda=1,norm=none,heads=1", v)[0].tokens == 1
    assert decide("edatt:alpha=0.2,lambda=1,norm=none,heads=0", v)[0].tokens == 0
    # without the last frame the window moves to frame 2, which nobody attends to
    assert decide("edatt:alpha=0.2,lambda=1,norm=none,exclude_last=1", v)[0].tokens == 1


# ---------------------------------------------------------------- AlignAtt

def test_alignatt_stops_at_the_first_token_aligned_in_the_window():
    # 8 frames, window 4: frames 4..7 are too new. Frame 4 is exactly on the boundary and stops.
    rows = one_hot_rows([1, 3, 4, 2], 8)
    d, _ = decide("alignatt:frames=4", view([W + "a", W + "b", W + "c", W + "d"], att(rows)))
    assert d.tokens == 2
    rows = one_hot_rows([1, 3, 3, 2], 8)
    d, _ = decide("alignatt:frames=4", view([W + "a", W + "b", W + "c", W + "d"], att(rows)))
    assert d.tokens == 4


def test_alignatt_returns_raw_token_counts_for_the_session_to_round():
    # "cat" is two pieces; its second piece aligns to new audio: the session will round 2 down to 1
    rows = one_hot_rows([0, 1, 6], 8)
    d, _ = decide("alignatt:frames=4", view([W + "the", W + "ca", "t"], att(rows)))
    assert d.tokens == 2


def test_alignatt_memory_shorter_than_window_commits_nothing():
    rows = one_hot_rows([0, 1], 3)
    assert decide("alignatt:frames=4", view([W + "a", W + "b"], att(rows)))[0].tokens == 0


def test_alignatt_exclude_last_ignores_the_sink_frame():
    rows = np.full((1, 8), 0.02, dtype=np.float32)
    rows[0, 7], rows[0, 1] = 0.6, 0.28  # most on the last frame (a sink), then frame 1
    v = view([W + "a"], att(rows))
    assert decide("alignatt:frames=2", v)[0].tokens == 0
    assert decide("alignatt:frames=2,exclude_last=1", v)[0].tokens == 1
    # without the sink the range is 7 frames, so with frames=6 frame 1 is on the boundary
    assert decide("alignatt:frames=6,exclude_last=1", v)[0].tokens == 0


def sink_rows(n_tokens: int, frames: int = 8) -> np.ndarray:
    """Every token puts 0.5 on the last frame; token i also puts 0.3 on its own frame i."""
    rows = np.full((n_tokens, frames), 0.2 / (frames - 2), dtype=np.float32)
    rows[:, -1] = 0.5
    for i in range(n_tokens):
        rows[i, i] = 0.3
    return rows


def test_alignatt_zscore_removes_a_column_every_token_attends_to():
    v = view([W + "a", W + "b", W + "c", W + "d"], att(sink_rows(4)))
    assert decide("alignatt:frames=2", v)[0].tokens == 0
    assert decide("alignatt:frames=2,zscore=1", v)[0].tokens == 4


def test_alignatt_zscore_needs_enough_tokens_and_counts_the_prefix():
    assert ZSCORE_MIN_TOKENS == 4
    rows = sink_rows(4)
    few = view([W + "c", W + "d"], att(rows[2:]))
    assert decide("alignatt:frames=2,zscore=1", few)[0].tokens == 0  # 2 rows: left raw
    with_prefix = view([W + "c", W + "d"], att(rows[2:]), prefix_pieces=[W + "a", W + "b"],
                       prefix_attention=att(rows[:2]))
    assert decide("alignatt:frames=2,zscore=1", with_prefix)[0].tokens == 2


def test_zscore_frames_is_per_frame_across_tokens():
    m = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0], [7.0, 5.0]])
    z = zscore_frames(m)
    np.testing.assert_allclose(z[:, 0], (m[:, 0] - 4.0) / np.sqrt(5.0))
    np.testing.assert_allclose(z[:, 1], 0.0)


@settings(max_examples=200, deadline=None)
@given(
    aligned=st.lists(st.integers(0, 11), min_size=1, max_size=10),
    window=st.integers(1, 12),
)
def test_alignatt_commits_exactly_the_tokens_before_the_first_late_one(aligned, window):
    rows = one_hot_rows(aligned, 12)
    d, _ = decide(f"alignatt:frames={window}", view([W + "w"] * len(aligned), att(rows)))
    assert all(f < 12 - window for f in aligned[: d.tokens])
    assert d.tokens == len(aligned) or aligned[d.tokens] >= 12 - window


# ---------------------------------------------------------------- common edge cases

ATTENTION_SPECS = ["edatt", "alignatt", "streamatt"]
ALL_SPECS = ["waitk:k=0", "la:n=1", "offline"] + ATTENTION_SPECS


@pytest.mark.parametrize("spec", ATTENTION_SPECS)
def test_attention_policies_refuse_a_model_without_cross_attention(spec):
    with pytest.raises(ValueError, match="cross-attention"):
        decide(spec, view([W + "a"], None, frames=10))
    with pytest.raises(ValueError, match="cross-attention"):
        decide(spec, view([W + "a"], None, frames=10, finished=True))


@pytest.mark.parametrize("spec", ATTENTION_SPECS)
def test_attention_shape_mismatch_is_a_clear_error(spec):
    with pytest.raises(ValueError, match="tokens, frames"):
        decide(spec, view([W + "a", W + "b"], att(one_hot_rows([0], 8))))


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_end_of_stream_commits_everything(spec):
    rows = one_hot_rows([7, 7, 7], 8)  # every token on the newest frame: no attention policy would write it
    d, _ = decide(spec, view([W + "a", "b", W + "c"], att(rows), finished=True))
    assert d.tokens == 3 and d.drop_frames == 0


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_no_new_tokens_commits_nothing(spec):
    d, _ = decide(spec, view([], att(np.zeros((0, 8))), frames=8, chunks=20))
    assert d.tokens == 0


def test_policies_are_frozen_and_state_is_explicit():
    policy = parse_policy("la:n=2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.n = 3
    s0 = policy.init_state()
    _, s1 = policy.decide(view([W + "a", W + "b"]), s0)
    assert s0 == () and len(s1) == 1  # the old state value is untouched


# ---------------------------------------------------------------- wait-k and offline

def test_waitk_writes_whole_words_while_source_leads_by_k():
    pieces = [W + "a", W + "b", "c", W + "d", W + "e"]
    assert decide("waitk:k=2", view(pieces, chunks=2))[0].tokens == 0
    assert decide("waitk:k=2", view(pieces, chunks=4))[0].tokens == 3      # 2 words: "a", "bc"
    assert decide("waitk:k=2", view(pieces, chunks=4, committed=["x"]))[0].tokens == 1
    assert decide("waitk:k=1,unit=word", view(pieces, source_words=3))[0].tokens == 3
    assert decide("waitk:k=1,unit=word", view(pieces, source_words=None))[0].tokens == 0
    assert decide("waitk:k=0,chunk_ms=80", view(pieces, frames=4, frame_ms=40.0))[0].tokens == 3  # 160 ms


def test_offline_waits_for_the_end():
    pieces = [W + "a", W + "b"]
    assert decide("offline", view(pieces, chunks=100))[0].tokens == 0
    assert decide("offline", view(pieces, finished=True))[0].tokens == 2


# ---------------------------------------------------------------- StreamAtt

def test_streamatt_commits_whole_words_only():
    rows = one_hot_rows([0, 1, 6, 7], 8)
    d, _ = decide("streamatt:frames=4", view([W + "the", W + "ca", "t", W + "sat"], att(rows)))
    assert d.tokens == 1  # AlignAtt stops inside "cat": only "the" is whole
    assert whole_word_tokens([W + "the", W + "ca", "t", W + "sat"], 2) == 1
    assert whole_word_tokens([W + "the", W + "ca", "t", W + "sat"], 3) == 3


def streamatt_view(prefix_aligned, cand_aligned, prefix=(W + "a", W + "b", W + "c"), cand=(W + "d", W + "e"),
                   frames=10, **kw):
    return view(list(cand), att(one_hot_rows(cand_aligned, frames)), prefix_pieces=list(prefix),
                prefix_attention=att(one_hot_rows(prefix_aligned, frames)), **kw)


def test_streamatt_trims_text_to_the_last_words_and_audio_to_their_earliest_frame():
    v = streamatt_view([0, 2, 3], [4, 9])  # "d" is written; "e" is on the newest audio
    d, _ = decide("streamatt:frames=4,history_words=3", v)
    # history a b c d -> b c d; "a" leaves, and the kept tokens attend from frame 2 on
    assert d == Decision(1, drop_frames=2, keep_words=3)


def test_streamatt_keeps_audio_of_uncommitted_tokens():
    prefix, prefix_att = [W + "a", W + "b", W + "c"], att(one_hot_rows([0, 2, 3], 10))
    cand = [W + "d", W + "e", W + "f"]
    v = view(cand, att(one_hot_rows([4, 5, 9], 10)), prefix_pieces=prefix, prefix_attention=prefix_att)
    d, _ = decide("streamatt:frames=4,history_words=2,max_memory_s=0", v)
    assert d == Decision(2, drop_frames=4, keep_words=2)  # "d e" stay, from frame 4 on
    v = view(cand, att(one_hot_rows([4, 5, 1], 10)), prefix_pieces=prefix, prefix_attention=prefix_att)
    d, _ = decide("streamatt:frames=4,history_words=2,max_memory_s=0", v)
    assert d == Decision(2, drop_frames=1, keep_words=2)  # "f", still to be written, looks back at frame 1


def test_streamatt_keeps_everything_while_history_is_short():
    d, _ = decide("streamatt:frames=4,history_words=20", streamatt_view([0, 2, 3], [4, 9]))
    assert d == Decision(1, drop_frames=0, keep_words=4)


def test_streamatt_multi_piece_words_in_history():
    prefix = [W + "ab", "c", W + "de", "f", "g"]
    v = view([W + "h", W + "i"], att(one_hot_rows([5, 9], 10)), prefix_pieces=prefix,
             prefix_attention=att(one_hot_rows([0, 1, 3, 2, 5], 10)))
    d, _ = decide("streamatt:frames=4,history_words=2", v)
    # words: abc defg h -> keep "defg h"; its pieces attend frames 3, 2, 5, 5 and the uncommitted "i" 9
    assert d == Decision(1, drop_frames=2, keep_words=2)


def test_streamatt_punctuation_history():
    assert ends_sentence("end.") and ends_sentence('so?"') and ends_sentence("wait;")
    assert not ends_sentence("3.5") and not ends_sentence("word") and not ends_sentence("")
    prefix = [W + "Hi", ".", W + "so", W + "we"]
    v = view([W + "go", W + "now"], att(one_hot_rows([5, 9], 10)), prefix_pieces=prefix,
             prefix_attention=att(one_hot_rows([0, 1, 3, 4], 10)))
    d, _ = decide("streamatt:frames=4,history=punct", v)
    assert d == Decision(1, drop_frames=3, keep_words=3)  # "so we go" stays; "Hi." leaves with frames 0-2
    d, _ = decide("streamatt:frames=4,history=punct,punct_max_words=2", v)
    assert d == Decision(1, drop_frames=4, keep_words=2)


def test_streamatt_sentence_end_empties_the_text_history():
    prefix = [W + "we", W + "go"]
    v = view([W + "now", "."], att(one_hot_rows([4, 5], 10)), prefix_pieces=prefix,
             prefix_attention=att(one_hot_rows([1, 3], 10)))
    d, _ = decide("streamatt:frames=4,history=punct", v)
    # AlignAtt allows both pieces but the last word is not complete until the next word starts
    assert d == Decision(0, drop_frames=0, keep_words=2)
    v = view([W + "now", ".", W + "and"], att(one_hot_rows([4, 5, 8], 10)), prefix_pieces=prefix,
             prefix_attention=att(one_hot_rows([1, 3], 10)))
    d, _ = decide("streamatt:frames=4,history=punct", v)
    assert d == Decision(2, drop_frames=8, keep_words=0)  # only "and", not yet written, needs audio (frame 8 on)
    v = view([W + "now", ".", W + "and", W + "then"], att(one_hot_rows([4, 5, 5, 9], 10)), prefix_pieces=prefix,
             prefix_attention=att(one_hot_rows([1, 3], 10)))
    d, _ = decide("streamatt:frames=4,history=punct", v)
    assert d == Decision(3, drop_frames=5, keep_words=1)  # "and" is written and kept


def test_streamatt_caps_memory():
    v = streamatt_view([0, 2, 3], [4, 9], frames=10, frame_ms=40.0)
    d, _ = decide("streamatt:frames=4,history_words=20,max_memory_s=0.2", v)  # 5 frames at most
    assert d == Decision(1, drop_frames=5, keep_words=4)
    d, _ = decide("streamatt:max_memory_s=0.2", view([], att(np.zeros((0, 10))), frames=10, frame_ms=40.0))
    assert d == Decision(0, drop_frames=5)


def test_streamatt_needs_the_prefix_attention():
    v = view([W + "d"], att(one_hot_rows([1], 10)), prefix_pieces=[W + "a"], prefix_attention=None)
    with pytest.raises(ValueError, match="prefix attention is None"):
        decide("streamatt", v)
    # no prefix yet: nothing is needed
    assert decide("streamatt", view([W + "d", W + "e"], att(one_hot_rows([1, 2], 10))))[0].tokens == 1


pieces_st = st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c."])), min_size=0, max_size=8).map(
    lambda ps: [(W if start or i == 0 else "") + text for i, (start, text) in enumerate(ps)]
)


@settings(max_examples=300, deadline=None)
@given(prefix=pieces_st, cand=pieces_st.filter(bool), data=st.data(), history=st.sampled_from(["words", "punct"]))
def test_streamatt_invariants(prefix, cand, data, history):
    n_frames = 12
    prefix_al = data.draw(st.lists(st.integers(0, n_frames - 1), min_size=len(prefix), max_size=len(prefix)))
    cand_al = data.draw(st.lists(st.integers(0, n_frames - 1), min_size=len(cand), max_size=len(cand)))
    v = view(cand, att(one_hot_rows(cand_al, n_frames)), prefix_pieces=prefix,
             prefix_attention=att(one_hot_rows(prefix_al, n_frames)) if prefix else None)
    d, _ = decide(f"streamatt:frames=3,history_words=2,history={history},max_memory_s=0", v)
    starts = [i for i, p in enumerate(cand) if i == 0 or p.startswith(W)]
    assert d.tokens == 0 or d.tokens in starts  # whole words only (the last word is never complete mid-stream)
    assert all(f < n_frames - 3 for f in cand_al[: d.tokens])  # AlignAtt's rule
    n_words = len([i for i, p in enumerate(prefix) if i == 0 or p.startswith(W)]) + len([s for s in starts if s < d.tokens])
    assert 0 <= d.keep_words <= n_words
    if history == "words":
        assert d.keep_words == min(2, n_words)
    if d.keep_words == n_words:
        assert d.drop_frames == 0
    else:
        # nothing the kept history or the uncommitted tail attends to is dropped
        committed = prefix + cand[: d.tokens]
        word_first = [i for i, p in enumerate(prefix) if i == 0 or p.startswith(W)]
        word_first += [len(prefix) + s for s in starts if s < d.tokens]
        first_kept = word_first[len(word_first) - d.keep_words] if d.keep_words else len(committed)
        protected = (prefix_al + cand_al)[first_kept:]
        if protected:
            assert d.drop_frames == min(protected)


@settings(max_examples=200, deadline=None)
@given(hyps=st.lists(st.lists(st.sampled_from(["a", "b", "c"]), min_size=0, max_size=6), min_size=1, max_size=6),
       n=st.integers(1, 3))
def test_la_commits_only_what_the_last_n_full_hypotheses_share(hyps, n):
    policy = parse_policy(f"la:n={n}")
    state, committed, fulls = policy.init_state(), [], []
    for words in hyps:  # each entry: the model's full hypothesis after a chunk (committed words excluded below)
        cand_words = words[len(committed):] if words[: len(committed)] == committed else words
        pieces = [W + w for w in cand_words]
        d, state = policy.decide(view(pieces, committed=committed), state)
        new = [p[1:] for p in pieces[: d.tokens]]
        fulls.append(committed + [p[1:] for p in pieces[:-1]])  # complete words only
        for k, word in enumerate(new):
            position = len(committed) + k
            assert len(fulls) >= n and all(len(f) > position and f[position] == word for f in fulls[-n:])
        committed = committed + new
