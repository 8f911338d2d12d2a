"""The data builder: espeak-ng TTS, offline text sources, the synthetic MuST-C-layout corpus and the MuST-C reader."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import yaml

from streamst.data import mustc, sources, synth, tts
from streamst.data.sources import SentencePair

SENTENCES = [
    ("The weather is nice today.", "Das Wetter ist heute schön."),
    ("He has a lot of work.", "Er hat viel Arbeit."),
    ("Please close the door.", "Bitte schließen Sie die Tür."),
    ("Where is the station?", "Wo ist der Bahnhof?"),
    ("I would like a cup of tea.", "Ich hätte gern eine Tasse Tee."),
    ("The children are playing outside.", "Die Kinder spielen draußen."),
    ("We will meet again tomorrow.", "Wir treffen uns morgen wieder."),
    ("This book is very interesting.", "Dieses Buch ist sehr interessant."),
    ("She bought a new car last week.", "Sie hat letzte Woche ein neues Auto gekauft."),
    ("The museum opens at ten.", "Das Museum öffnet um zehn."),
    ("My brother lives in Berlin.", "Mein Bruder wohnt in Berlin."),
    ("It has been raining all day.", "Es regnet schon den ganzen Tag."),
]
PAIRS = [SentencePair(en=e, target=d, source="test") for e, d in SENTENCES]
TEST_VOICES = ("en-gb-scotland+f2",)
CONFIG = synth.SynthConfig(pairs=("en-de",), test_voices=TEST_VOICES, talk_seconds=(8.0, 14.0), seed=3,
                           dev_fraction=0.15, test_fraction=0.2)


def build(root: Path, config: synth.SynthConfig = CONFIG):
    return synth.build_corpus(root, config, pair_sources={"en-de": PAIRS})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    build(root)
    return root


def manifest(root: Path, split: str) -> list[dict]:
    return yaml.safe_load((root / "en-de" / "data" / split / "txt" / f"{split}.yaml").read_text())


def lines(root: Path, split: str, lang: str) -> list[str]:
    return (root / "en-de" / "data" / split / "txt" / f"{split}.{lang}").read_text(encoding="utf-8").splitlines()


# --- TTS --------------------------------------------------------------------------------------------------------

def test_synthesize_speaks_sentences_at_the_requested_speed():
    short, rate = tts.synthesize("Hello.", "en-us")
    audio, rate2 = tts.synthesize("This sentence is a good deal longer than the other one.", "en-gb+f3")
    fast, _ = tts.synthesize("This sentence is a good deal longer than the other one.", "en-gb+f3", rate=300)
    assert rate == rate2 == tts.ESPEAK_SAMPLE_RATE
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < audio.size / rate < 8.0
    assert short.size < audio.size and fast.size < 0.8 * audio.size
    assert 0.01 < float(np.sqrt(np.mean(audio**2))) and np.abs(audio).max() <= 1.0


def test_voices_differ_and_unknown_voice_is_an_error():
    a, _ = tts.synthesize("Good morning.", "en-us+f1")
    b, _ = tts.synthesize("Good morning.", "en-us+m3")
    n = min(a.size, b.size)
    assert not np.allclose(a[:n], b[:n])
    with pytest.raises(ValueError, match="no voice"):
        tts.synthesize("Good morning.", "xx-nonexistent")
    with pytest.raises(ValueError):
        tts.synthesize("   ", "en-us")


def test_every_listed_english_voice_exists():
    voices = tts.english_voices()
    assert len(voices) >= 8 * 13 and "en-gb+f3" in voices and "en-us" in voices
    assert [v for v in voices if not tts.voice_exists(v)] == []


# --- text sources -----------------------------------------------------------------------------------------------

@pytest.mark.skipif(not sources.DING_PATH.is_file(), reason="apt package trans-de-en not installed")
def test_ding_pairs_are_clean_sentences():
    pairs = sources.ding_pairs()
    assert len(pairs) > 10000
    assert len({p.en for p in pairs}) == len(pairs)
    for p in pairs:
        for text in (p.en, p.target):
            assert sources.is_sentence(text) and not any(c in text for c in "{}[]()/|")
    assert any(p.en == "He has a lot of work." and p.target == "Er hat viel Arbeit." for p in pairs)


@pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium not installed")
def test_apertium_translates_line_by_line():
    out = sources.apertium_translate(["The cat is black.", "Where is the house?", "Hello."])
    assert len(out) == 3
    assert "gato" in out[0].lower() and out[1].startswith("¿") and out[1].endswith("?")


def test_split_assignment_depends_only_on_the_sentence_and_seed():
    assert synth.assign_split("He has a lot of work.", 0, 0.03, 0.06) == \
        synth.assign_split("He has a lot of work.", 0, 0.03, 0.06)
    many = [synth.assign_split(f"Sentence number {i}.", 0, 0.1, 0.2) for i in range(3000)]
    assert 0.15 < many.count("tst-COMMON") / 3000 < 0.25 and 0.06 < many.count("dev") / 3000 < 0.14


# --- the synthetic corpus ---------------------------------------------------------------------------------------

def test_corpus_has_the_mustc_layout_and_segments_inside_their_wavs(corpus):
    total = 0
    for split in synth.SPLITS:
        split_dir = corpus / "en-de" / "data" / split
        entries = manifest(corpus, split)
        assert len(entries) == len(lines(corpus, split, "en")) == len(lines(corpus, split, "de")) > 0
        for entry in entries:
            assert set(entry) == {"wav", "offset", "duration", "speaker_id"}
            info = soundfile.info(str(split_dir / "wav" / entry["wav"]))
            assert info.samplerate == 16000 and info.channels == 1
            assert entry["offset"] >= 0 and entry["duration"] > 0.3
            assert entry["offset"] + entry["duration"] <= info.frames / 16000 + 1e-6
        # segments of one talk do not overlap
        for wav in {e["wav"] for e in entries}:
            spans = sorted((e["offset"], e["offset"] + e["duration"]) for e in entries if e["wav"] == wav)
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        total += len(entries)
    assert total == len(SENTENCES)
    card = (corpus / "DATA_CARD.md").read_text()
    assert "en-gb-scotland+f2" in card and "tst-COMMON" in card and "GPL-3.0" in card
    assert (corpus / "synth_info.json").is_file()


def test_held_out_sentences_and_voice(corpus):
    by_split = {s: set(lines(corpus, s, "en")) for s in synth.SPLITS}
    assert by_split["train"] and by_split["dev"] and by_split["tst-COMMON"]
    assert not (by_split["train"] & by_split["dev"]) and not (by_split["train"] & by_split["tst-COMMON"])
    assert not (by_split["dev"] & by_split["tst-COMMON"])
    assert set().union(*by_split.values()) == {e for e, _ in SENTENCES}
    test_speakers = {e["speaker_id"] for e in manifest(corpus, "tst-COMMON")}
    other_speakers = {e["speaker_id"] for s in ("train", "dev") for e in manifest(corpus, s)}
    assert test_speakers <= set(TEST_VOICES)
    assert not (other_speakers & set(TEST_VOICES))
    # the translation stays on the line of its sentence
    expected = dict(SENTENCES)
    for split in synth.SPLITS:
        assert [expected[e] for e in lines(corpus, split, "en")] == lines(corpus, split, "de")


def test_build_is_deterministic_and_the_same_with_worker_processes(corpus, tmp_path):
    # espeak-ng's pitch flutter runs on from utterance to utterance, so samples may differ; nothing else does
    build(tmp_path / "again", synth.SynthConfig(**{**CONFIG.__dict__, "workers": 2}))
    for split in synth.SPLITS:
        assert manifest(tmp_path / "again", split) == manifest(corpus, split)
        assert lines(tmp_path / "again", split, "de") == lines(corpus, split, "de")
        for wav in sorted((corpus / "en-de" / "data" / split / "wav").iterdir()):
            again = soundfile.info(str(tmp_path / "again" / "en-de" / "data" / split / "wav" / wav.name))
            assert again.frames == soundfile.info(str(wav)).frames
    build(tmp_path / "other", synth.SynthConfig(**{**CONFIG.__dict__, "seed": 4}))
    assert manifest(tmp_path / "other", "train") != manifest(corpus, "train")


def test_hours_repeats_train_sentences_with_new_voices(tmp_path):
    config = synth.SynthConfig(**{**CONFIG.__dict__, "hours": 60 / 3600})
    stats = build(tmp_path, config)
    train = stats["en-de"]["train"]
    assert train.segments > train.sentences and 35 < train.seconds < 90
    assert stats["en-de"]["tst-COMMON"].segments == stats["en-de"]["tst-COMMON"].sentences


# --- the reader -------------------------------------------------------------------------------------------------

def test_reader_round_trip(corpus):
    for split in synth.SPLITS:
        segments, problems = mustc.read_split_checked(corpus, "en-de", split)
        assert problems == []
        assert [s.source for s in segments] == lines(corpus, split, "en")
        assert [s.target for s in segments] == lines(corpus, split, "de")
        assert [s.index for s in segments] == list(range(len(segments)))
        entries = manifest(corpus, split)
        assert [(s.wav.name, s.offset, s.duration, s.speaker) for s in segments] == \
            [(e["wav"], e["offset"], e["duration"], e["speaker_id"]) for e in entries]
        pieces = list(mustc.iter_segment_audio(segments))
        assert len(pieces) == len(segments)
        for segment, audio in pieces:
            assert abs(audio.size - segment.duration * 16000) <= 1
            assert float(np.sqrt(np.mean(audio**2))) > 0.005  # speech, not a pause
            np.testing.assert_allclose(mustc.load_segment_audio(segment), audio, atol=1e-6)


def test_reader_resamples_other_rates(tmp_path):
    txt, wav = tmp_path / "en-de" / "data" / "dev" / "txt", tmp_path / "en-de" / "data" / "dev" / "wav"
    txt.mkdir(parents=True)
    wav.mkdir(parents=True)
    audio, rate = tts.synthesize("One two three.", "en-us")
    soundfile.write(str(wav / "t.wav"), audio, rate)
    (txt / "dev.yaml").write_text("- {duration: 0.5, offset: 0.25, speaker_id: s, wav: t.wav}\n")
    (txt / "dev.en").write_text("One two three.\n")
    (txt / "dev.de").write_text("Eins zwei drei.\n")
    [segment] = mustc.read_split(tmp_path, "en-de", "dev")
    assert mustc.load_segment_audio(segment).size == 8000
    [(_, talk, _)] = list(mustc.iter_talks([segment]))
    assert abs(talk.size - audio.size * 16000 / rate) <= 1


def test_bad_entries_are_reported_with_their_line_and_skipped(corpus, tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(corpus, root)
    txt = root / "en-de" / "data" / "train" / "txt"
    entries = (txt / "train.yaml").read_text().splitlines()
    en, de = lines(root, "train", "en"), lines(root, "train", "de")
    assert len(entries) >= 6
    entries[0] = "- {duration: 1.0, offset: [broken"                               # line 1: bad yaml
    en[1] = "   "                                                                 # line 2: empty transcript
    entries[2] = entries[2].replace("wav: train_", "wav: missing_")               # line 3: missing wav
    entries[3] = re.sub(r"duration: [0-9.]+", "duration: 9999.0", entries[3])    # line 4: past the end of the wav
    entries[4] = entries[4].replace("offset:", "offs:")                           # line 5: no offset
    (txt / "train.yaml").write_text("\n".join(entries) + "\n")
    (txt / "train.en").write_text("\n".join(en) + "\n")
    (txt / "train.de").write_text("\n".join(de + ["Eine Zeile zu viel."]) + "\n")  # counts differ
    segments, problems = mustc.read_split_checked(root, "en-de", "train")
    text = "\n".join(str(p) for p in problems)
    assert f"train.yaml:1: unparsable entry" in text
    assert "train.en:2: empty transcript" in text
    assert "train.yaml:3: missing or unreadable wav" in text and "missing_" in text
    assert "train.yaml:4: segment" in text and "past the end" in text
    assert "train.yaml:5: entry lacks offset" in text
    assert "line counts differ" in text
    assert len(problems) == 6
    assert [s.index for s in segments] == list(range(5, len(entries)))
    assert [s.source for s in segments] == en[5:]
    with pytest.raises(FileNotFoundError):
        mustc.read_split_checked(root, "en-de", "tst-HE")


def test_text_travels_as_tsv_and_builds_a_corpus_without_apt(tmp_path):
    sources.write_pairs_tsv(PAIRS, tmp_path / "text" / "en-de.tsv")
    assert sources.read_pairs_tsv(tmp_path / "text" / "en-de.tsv") == PAIRS
    stats = synth.build_corpus(tmp_path / "corpus", CONFIG, text_dir=tmp_path / "text")
    assert sum(s.segments for s in stats["en-de"].values()) == len(PAIRS)
    (tmp_path / "text" / "en-de.tsv").write_text("only one field\n")
    with pytest.raises(ValueError, match="en-de.tsv:1"):
        sources.read_pairs_tsv(tmp_path / "text" / "en-de.tsv")


def test_the_wheel_library_uses_its_own_voice_data():
    info = tts.library_info()
    if info is None:
        pytest.skip("espeakng-loader wheel not installed")
    import espeakng_loader

    assert Path(info[1]).resolve() == Path(espeakng_loader.get_data_path()).resolve()


@pytest.mark.skipif(not sources.DING_PATH.is_file(), reason="apt package trans-de-en not installed")
def test_cli_builds_and_checks_a_corpus(tmp_path, capsys):
    from streamst.cli import main

    assert main(["data", "synth", "--out", str(tmp_path), "--pairs", "en-de", "--max-sentences", "8"]) == 0
    assert "8 segments" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path)]) == 0
    assert main(["data", "synth", "--out", str(tmp_path), "--pairs", "en-fr"]) == 2
