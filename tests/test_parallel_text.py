"""All the parallel text there is offline (streamst.data.parallel), on the real installed data, sampled to stay fast."""
from __future__ import annotations

import gettext
import re
import shutil

import pytest

from streamst.data import parallel, sources
from streamst.data.sources import SentencePair

needs_ding = pytest.mark.skipif(not sources.DING_PATH.is_file(), reason="apt package trans-de-en not installed")
needs_diatheke = pytest.mark.skipif(shutil.which("diatheke") is None,
                                    reason="diatheke / sword-text-web / sword-text-sparv not installed")
needs_apertium = pytest.mark.skipif(shutil.which("apertium") is None, reason="apertium-eng-spa not installed")
ANNOTATION_CHARS = "{}[]()<>|;/…"


def _catalogues(lang: str) -> list:
    files = parallel.gettext_files(lang)
    if not files:
        pytest.skip(f"no gettext catalogues installed under {parallel.LOCALE_DIR}/{lang}/LC_MESSAGES")
    return files


@needs_ding
def test_ding_phrases_are_multi_word_with_no_annotations_left():
    phrases = parallel.ding_phrase_pairs(max_lines=3000)
    assert len(phrases) > 2000
    assert len({p.en for p in phrases}) == len(phrases)
    for p in phrases:
        assert len(p.en.split()) >= 2 and not (p.en.startswith("to ") and len(p.en.split()) < 3)
        assert not any(c in p.en + p.target for c in ANNOTATION_CHARS), p
        assert not sources.is_sentence(p.en) and p.source == "ding-phrases"
        assert not re.search(r"\b(sb|sth|etw|jdm|jdn)\.", p.en + " " + p.target), p
    by_en = {p.en: p.target for p in phrases}
    # 'Aalsuppe {f} [cook.] | Aalsuppen {pl} :: eel soup | eel soups': sub-entries stay aligned, {f} [cook.] go.
    assert by_en["eel soup"] == "Aalsuppe" and by_en["eel soups"] == "Aalsuppen"


@needs_ding
def test_ding_sub_entries_and_alternatives_split_on_a_real_line():
    line = next(line for line in sources.DING_PATH.open(encoding="utf-8") if line.startswith("Aalräucherei {f}"))
    entries = list(parallel.ding_alternatives(line))
    # '... :: eel smokery; eel-smoking business <eelsmoking business> <eel smoking business> | eel smokeries; ...'
    assert entries[0] == (["Aalräucherei"], ["eel smokery", "eel-smoking business"])
    assert entries[1][1] == ["eel smokeries", "eel-smoking businesses"]
    assert parallel.strip_annotations("Abbau {m} (von etw. (chem.)) [biol.]") == "Abbau"


def test_mo_reader_agrees_with_the_standard_library():
    path = max(_catalogues("de"), key=lambda p: p.stat().st_size)
    with path.open("rb") as f:
        catalog = gettext.GNUTranslations(f)._catalog
    entries = parallel.read_mo(path)
    assert len(entries) > 50
    plain = {k: v for k, v in catalog.items() if isinstance(k, str) and "\x04" not in k}
    # same text wherever the msgid carries no msgctxt (read_mo drops the context, gettext keeps it in the key)
    assert sum(plain.get(msgid) == msgstr for msgid, msgstr in entries) >= 0.9 * len(plain) - 1


@pytest.mark.parametrize("lang", ["de", "es"])
def test_gettext_pairs_have_no_format_strings_and_are_translated(lang):
    files = _catalogues(lang)[:12]
    pairs = parallel.gettext_pairs(lang, files=files)
    assert pairs, f"no usable entries in {[f.name for f in files]}"
    for p in pairs:
        for text in (p.en, p.target):
            assert not re.search(r"%\w|%\(|\{\w*\}|<\w+|\\n|\$\{|&\w+;|\n|\t", text), p
        assert len(p.en.split()) >= 2 and p.en.casefold() != p.target.casefold()
        assert p.source.startswith("gettext:")
    assert parallel.gettext_text("_Open the file %s") is None
    assert parallel.gettext_text("Open _Recent") == "Open Recent" == parallel.gettext_text("Open &Recent")
    assert parallel.gettext_text("<b>Bold</b> text") is None and parallel.gettext_text("Hello {0}") is None


def test_filters_drop_what_they_must():
    limits = parallel.SENTENCE_LIMITS
    good = SentencePair("The house is small.", "Das Haus ist klein.", "test")
    assert parallel.keep_pair(good, limits)
    dropped = [SentencePair("The house is small.", "The house is small.", "copied"),
               SentencePair("Open the file now please.", "Open the file jetzt please.", "mostly copied"),
               SentencePair("The house is small.", "Дом маленький.", "cyrillic"),
               SentencePair("The house is small.", "Das Haus ist klein, und es steht seit vielen Jahren leer.", "ratio"),
               SentencePair("Yes.", "Ja.", "one word"),
               SentencePair(" ".join(["word"] * 41) + ".", " ".join(["Wort"] * 41) + ".", "too long")]
    assert [p.source for p in dropped if parallel.keep_pair(p, limits)] == []
    assert parallel.keep_pair(dropped[0], limits, same_language=True)
    twice = [good, SentencePair("the house is small.", "Das Häuschen ist klein.", "dup")]
    assert parallel.clean(twice, limits) == [good]


@needs_diatheke
def test_bible_headings_and_psalm_titles_are_left_out():
    # diatheke repeats 'A praise psalm by David.' before every verse of Psalm 145 (and on, into later books)
    pairs = parallel.bible_verse_pairs("Psalms 145:1-Psalms 145:8")
    assert len(pairs) >= 5 and all("psalm" not in p.en.lower() for p in pairs)
    assert not any(p.target.startswith("Salmo") for p in pairs)  # verse 1 holds RV's title: left out
    kings = parallel.bible_verses(sources.BIBLE_MODULES["es"], "II Kings 1:1-II Kings 1:2")
    assert set(kings) == {"II Kings 1:1", "II Kings 1:2"} and not any("<G" in v for v in kings.values())
    assert parallel._sentence_case("Y MOISÉS dijo") == "Y Moisés dijo"


@needs_ding
@needs_apertium
def test_parallel_corpus_counts_by_source():
    en_de = parallel.parallel_corpus("en-de", "all", sample=300)
    counts = parallel.count_by_source(en_de)
    assert counts["ding"] > 0 and counts["ding-phrases"] > 0
    assert len({p.en.casefold() for p in en_de}) == len(en_de)
    en_es = parallel.parallel_corpus("en-es", "sentences", sample=40)
    counts = parallel.count_by_source(en_es)
    assert counts["ding+apertium"] > 0 and counts["wordnet+apertium"] > 0
    if shutil.which("diatheke"):
        assert counts["bible"] > 0
    assert all(p.target != p.en for p in en_es)
    card = parallel.render_text_card({"en-es.sentences.tsv": counts})
    assert "wordnet+apertium" in card and "Public domain" in card
    with pytest.raises(ValueError):
        parallel.parallel_corpus("en-de", "words")
