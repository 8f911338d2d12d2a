"""All the parallel text there is offline: Ding phrases and sentences, gettext catalogues, apertium, Bibles.

`streamst.data.sources` gives the sentence pairs `streamst data synth` speaks; this module adds what a text-only
model can also learn from (issue #17): Ding's multi-word phrase pairs, the msgid/msgstr pairs of the installed
gettext catalogues, apertium Spanish of every English sentence there is, and cleaner Bible verse pairs. Every
reader returns `SentencePair`s whose `source` names where they came from; `parallel_corpus` filters and merges
them. Licences: see DATA_CARD.md and `SOURCE_LICENCES`.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from streamst.data import sources
from streamst.data.sources import SentencePair, normalize

LOCALE_DIR = Path("/usr/share/locale")
KINDS = ("sentences", "phrases", "all")

# source name (or prefix before ':') -> (what, where from, licence); `streamst data text` copies it into its card.
SOURCE_LICENCES: dict[str, tuple[str, str]] = {
    "ding": ("Ding example sentences (de :: en)", "GPL-2.0-or-later (trans-de-en)"),
    "ding-phrases": ("Ding multi-word phrase pairs (de :: en sub-entries and alternatives)",
                     "GPL-2.0-or-later (trans-de-en)"),
    "ding+apertium": ("Ding English sentences, Spanish by apertium-eng-spa", "GPL-2.0-or-later (text and program)"),
    "wordnet": ("WordNet 3.0 usage examples", "WordNet 3.0 licence (permissive, BSD-like)"),
    "wordnet+apertium": ("WordNet 3.0 usage examples, Spanish by apertium-eng-spa",
                         "WordNet 3.0 licence; apertium-eng-spa GPL-2.0-or-later"),
    "bible": ("World English Bible (2015) / Reina-Valera 1909 verse pairs", "Public domain"),
    "gettext": ("msgid/msgstr pairs of installed gettext catalogues, one source per domain",
                ("each package's own licence: mostly GPL-2+/GPL-3+/LGPL-2.1+, some permissive (PostgreSQL, MIT); "
                 "package: `dpkg -S /usr/share/locale/<lang>/LC_MESSAGES/<domain>.mo`, licence: its "
                 "/usr/share/doc/<package>/copyright")),
}


# --- filters ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """What a pair must satisfy: words per side and the target/English length ratio in characters."""

    min_words: int = 2
    max_words: int = 40
    min_ratio: float = 0.5
    max_ratio: float = 2.0


# Sentences translate to about the same length; phrases less so (one German compound for three English words).
SENTENCE_LIMITS = Limits(min_words=2, max_words=40, min_ratio=0.5, max_ratio=2.0)
PHRASE_LIMITS = Limits(min_words=2, max_words=12, min_ratio=0.3, max_ratio=3.0)
# Reina-Valera is terse (median 0.96 of the WEB's length); below 0.65 most pairs are verses split differently.
BIBLE_LIMITS = Limits(min_words=3, max_words=30, min_ratio=0.65, max_ratio=1.6)


def is_latin(text: str) -> bool:
    """Every letter is in the Latin script (so no Cyrillic, Greek or CJK strays), and there is at least one."""
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and all(c < "\u0250" or unicodedata.name(c, "").startswith("LATIN") for c in letters)


_WORD = re.compile(r"\w+")


def is_copied(en: str, target: str) -> bool:
    """The target is English left untranslated: the same text, or (3+ words) nearly all of its words English ones."""
    en_words = _WORD.findall(en.casefold())
    target_words = _WORD.findall(target.casefold())
    if target_words == en_words:
        return True
    if len(target_words) < 3:
        return False
    english = set(en_words)
    return sum(w in english for w in target_words) >= 0.8 * len(target_words)


def keep_pair(pair: SentencePair, limits: Limits, *, same_language: bool = False) -> bool:
    """One pair passes: words on both sides within limits, length ratio, Latin script, target not copied
    (unless `same_language`: en-en pairs are copies by design)."""
    en, target = pair.en, pair.target
    if not en or not target or not (limits.min_words <= len(en.split()) <= limits.max_words):
        return False
    if not 1 <= len(target.split()) <= limits.max_words:
        return False
    if not limits.min_ratio <= len(target) / len(en) <= limits.max_ratio:
        return False
    return is_latin(en) and is_latin(target) and (same_language or not is_copied(en, target))


def clean(pairs: Iterable[SentencePair], limits: Limits, seen: set[str] | None = None, *,
          same_language: bool = False) -> list[SentencePair]:
    """The pairs that pass `keep_pair`, one per English text (case-insensitive); `seen` carries across sources."""
    seen = set() if seen is None else seen
    out: list[SentencePair] = []
    for pair in pairs:
        key = pair.en.casefold()
        if key not in seen and keep_pair(pair, limits, same_language=same_language):
            seen.add(key)
            out.append(pair)
    return out


# --- Ding phrases -----------------------------------------------------------------------------------------------

# Ding's annotations: {f} {pl} {vt} grammar, [coll.] [Br.] register and field, (of sth.) glosses, <...> spellings
# kept for search only. Innermost first, repeated, so that nested ones go too.
_ANNOTATION = re.compile(r"\{[^{}]*\}|\[[^\[\]]*\]|\([^()]*\)|<[^<>]*>")
_OPENERS = re.compile(r"[{\[(<]")
# Placeholders (sb. sth. etw. jdm.) and ellipses mark templates rather than text; a slash marks unexpanded variants.
_TEMPLATE = re.compile(r"\b(?:sb|sth|so|etw|jd|jdm|jdn|jds|sth|etc)\.|…|\.\.\.|/|[{}\[\]()<>|=+~#_*@]")


def strip_annotations(text: str) -> str:
    """Ding text with its {..} [..] (..) <..> annotations removed and spaces tidied."""
    previous = None
    while previous != text and _OPENERS.search(text):
        previous, text = text, _ANNOTATION.sub(" ", text)
    return normalize(text).strip(" ,;:")


def ding_alternatives(line: str) -> Iterator[tuple[list[str], list[str]]]:
    """For one `de :: en` line, each sub-entry's (German alternatives, English alternatives), annotations removed.

    Sub-entries (' | ') correspond one to one on the two sides; alternatives ('; ') within a sub-entry are
    synonyms, not aligned one to one. Annotations are removed before splitting, as a gloss may hold a ';'.
    """
    if line.startswith("#") or " :: " not in line:
        return
    de_side, en_side = line.rstrip("\n").split(" :: ", 1)
    de_parts, en_parts = de_side.split("|"), en_side.split("|")
    if len(de_parts) != len(en_parts):
        return
    for de, en in zip(de_parts, en_parts):
        de_alts = [a.strip(" ,:") for a in strip_annotations(de).split(";") if a.strip(" ,:")]
        en_alts = [a.strip(" ,:") for a in strip_annotations(en).split(";") if a.strip(" ,:")]
        if de_alts and en_alts:
            yield de_alts, en_alts


def _phrase_words(en: str) -> int:
    """English words of a phrase, not counting the 'to' of an infinitive ('to scavenge' is one word)."""
    words = en.split()
    return len(words) - (1 if words[:1] == ["to"] else 0)


def ding_phrase_pairs(path: Path = sources.DING_PATH, *, max_lines: int | None = None) -> list[SentencePair]:
    """Ding's multi-word phrase pairs (not sentences), one per distinct English phrase, in file order.

    Each English alternative of a sub-entry is paired with the German alternative in the same place, or the
    first German one (the headword) where the German side has fewer; a pair is kept when the English has 2+
    words (an infinitive's 'to' not counted), neither side is a sentence (those are `sources.ding_pairs`'),
    and neither holds a template placeholder (sb., etw., ...) or an unexpanded '/' variant.
    `max_lines` reads only the first lines (for quick checks).
    """
    pairs: list[SentencePair] = []
    seen: set[str] = set()
    for line in sources.ding_lines(path, max_lines):
        for de_alts, en_alts in ding_alternatives(line):
            for i, en in enumerate(en_alts):
                de = de_alts[i] if i < len(de_alts) else de_alts[0]
                if en in seen or _phrase_words(en) < 2 or _TEMPLATE.search(en) or _TEMPLATE.search(de):
                    continue
                if sources.is_sentence(en) or sources.is_sentence(de):
                    continue
                seen.add(en)
                pairs.append(SentencePair(en=en, target=de, source="ding-phrases"))
    return pairs


# --- gettext catalogues -----------------------------------------------------------------------------------------

def read_mo(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) of a compiled gettext catalogue, parsed from the GNU .mo format with the standard library.

    Skips the header, untranslated and plural entries (msgid holding a NUL); drops a msgctxt ('ctx\\x04msgid').
    Fuzzy entries never reach a .mo unless built with `msgfmt --use-fuzzy`, which Debian packages are not.
    The charset comes from the header (UTF-8 where it names none).
    """
    data = path.read_bytes()
    if len(data) < 28:
        raise ValueError(f"{path}: not a .mo file")
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(struct.unpack("<I", data[:4])[0])
    if order is None:
        raise ValueError(f"{path}: not a .mo file (bad magic number)")
    count, ids_at, strs_at = struct.unpack(order + "3I", data[8:20])

    def entry(table: int, i: int) -> bytes:
        length, offset = struct.unpack(order + "2I", data[table + 8 * i:table + 8 * i + 8])
        return data[offset:offset + length]

    raw = [(entry(ids_at, i), entry(strs_at, i)) for i in range(count)]
    header = dict(raw).get(b"", b"").decode("ascii", "replace")
    charset = re.search(r"charset=([\w-]+)", header)
    encoding = charset.group(1) if charset and charset.group(1).upper() != "CHARSET" else "utf-8"
    out: list[tuple[str, str]] = []
    for msgid, msgstr in raw:
        if not msgid or not msgstr or b"\0" in msgid:
            continue
        msgid = msgid.rsplit(b"\x04", 1)[-1]
        try:
            out.append((msgid.decode(encoding), msgstr.decode(encoding)))
        except (LookupError, UnicodeDecodeError):
            continue
    return out


# printf (%s %1$d %(name)s), Python/C# ({0} {name}), shell ($VAR ${x}), markup (<b> &amp;), escapes and code-ish
# characters: such strings are templates or code, not text one would say.
_FORMAT = re.compile(r"%(?:\(\w+\))?[-+ #0-9.*$lhqLjzt]*[a-zA-Z%]|\{\w*\}|\$\{?\w|<[^>]*>|&\w+;|\\|[\n\t\r]"
                     r"|[/=|@#*~^`<>{}\[\]]|--|\.\.\.|…|\b\w+_\w+\b|\b[a-z]+[A-Z]\w*")
# '_' and '&' mark keyboard accelerators in GTK and Qt labels ('_Open', '&Save'): removed before the checks.
_ACCELERATOR = re.compile(r"(?<![\w&])[_&](?=\w)|\(_\w\)|\(&\w\)")


def gettext_text(text: str) -> str | None:
    """A catalogue string as plain text: accelerators removed, quotes normalised; None where it is a template."""
    text = _ACCELERATOR.sub("", text)
    if _FORMAT.search(text):
        return None
    text = normalize(text).strip()
    return text.rstrip(":").strip() or None


def gettext_files(lang: str, locale_dir: Path = LOCALE_DIR) -> list[Path]:
    """The installed catalogues for `lang` ('de', 'es'), sorted by domain."""
    return sorted((locale_dir / lang / "LC_MESSAGES").glob("*.mo"))


def gettext_pairs(lang: str, locale_dir: Path = LOCALE_DIR, *, files: list[Path] | None = None) -> list[SentencePair]:
    """msgid/msgstr pairs of every installed `lang` catalogue that are text: no format strings or markup, 2+ English
    words, translated (not identical to the English). `source` is 'gettext:<domain>', the .mo file's name.

    Pairs are not deduplicated here beyond one per (domain, English); `clean` does that across domains.
    """
    pairs: list[SentencePair] = []
    for path in gettext_files(lang, locale_dir) if files is None else files:
        seen: set[str] = set()
        try:
            entries = read_mo(path)
        except (OSError, ValueError):
            continue
        for msgid, msgstr in entries:
            en, target = gettext_text(msgid), gettext_text(msgstr)
            if en is None or target is None or en in seen or len(en.split()) < 2:
                continue
            if en.casefold() == target.casefold():
                continue
            seen.add(en)
            pairs.append(SentencePair(en=en, target=target, source=f"gettext:{path.stem}"))
    return pairs


# --- Bibles -----------------------------------------------------------------------------------------------------

ALL_VERSES = "Genesis 1:1-Revelation 22:21"
# 'II Chronicles 36:23: text', indented in poetry books; `sources._VERSE` lost the I/II/III of book names.
_VERSE_LINE = re.compile(r"^\s*((?:I{1,3} )?(?:[1-3] )?[A-Z][a-z]+(?: (?:of )?[A-Z][a-z]+)* \d+:\d+):\s?(.*)$")
_STRONGS = re.compile(r"<[GH]\d+>")
_CAPS_WORD = re.compile(r"(\w)(\w*)")
_GLUED = re.compile(r"[a-z][A-Z]")  # 'Godcreated': markup removed without its space


def bible_verses(module: str, keys: str = ALL_VERSES) -> dict[str, str]:
    """Verses of a sword module through `diatheke`, keyed 'Book chapter:verse', headings left out.

    diatheke's plain output puts a psalm's (or section's) heading on its own line before the verse and repeats
    the last heading before every later verse, into other books; so a line that stands before a verse key
    three or more times is a heading, not verse text. Strong's numbers (<G1234>) are removed.
    """
    if shutil.which("diatheke") is None:
        raise FileNotFoundError("diatheke not found (apt-get install diatheke sword-text-web sword-text-sparv)")
    lines = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", keys],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    before_key = Counter(a.strip() for a, b in pairwise(lines)
                         if a.strip() and not _VERSE_LINE.match(a) and _VERSE_LINE.match(b))
    headings = {text for text, n in before_key.items() if n >= 3} | {sources._STRAY_TITLE}
    verses: dict[str, list[str]] = {}
    key = None
    for line in lines:
        match = _VERSE_LINE.match(line)
        if match:
            key = match.group(1)
            verses[key] = [match.group(2)]
        elif key is not None and line.strip() and not line.startswith("(") and line.strip() not in headings:
            verses[key].append(line)
    return {k: normalize(_STRONGS.sub("", " ".join(v))) for k, v in verses.items()}


def _sentence_case(text: str) -> str:
    """RV chapters open in capitals ('EN el principio', 'Y MOISÉS dijo'): title-case those first words."""
    words = text.split(" ")
    for i, word in enumerate(words[:3]):
        letters = [c for c in word if c.isalpha()]
        if len(letters) > 1 and all(c.isupper() for c in letters):
            words[i] = _CAPS_WORD.sub(lambda m: m.group(1) + m.group(2).lower(), word)
    return " ".join(words)


def bible_verse_pairs(keys: str = ALL_VERSES) -> list[SentencePair]:
    """World English Bible / Reina-Valera 1909 verse pairs with the misaligned ones left out.

    Left out: a psalm's first verse (Reina-Valera has the psalm's title in it, the WEB as a heading), verses with
    glued words or brackets, and verses that are not sentence-like on both sides. The length filter of
    `parallel_corpus` (BIBLE_LIMITS) then drops verses the two versifications split differently.
    """
    english = bible_verses(sources.BIBLE_MODULES["en"], keys)
    spanish = bible_verses(sources.BIBLE_MODULES["es"], keys)
    pairs: list[SentencePair] = []
    for key, en in english.items():
        es = spanish.get(key)
        if not es or (key.startswith("Psalms ") and key.endswith(":1")):
            continue
        es = _sentence_case(es)
        if _GLUED.search(en) or re.search(r"[<>{}\[\]|/_*#@=+~]", en + es):
            continue
        if sources.is_sentence(en, min_words=3) and sources.is_sentence(es, min_words=3):
            pairs.append(SentencePair(en=en, target=es, source="bible"))
    return pairs


# --- the corpus -------------------------------------------------------------------------------------------------

def apertium_sentence_pairs(sample: int | None = None) -> list[SentencePair]:
    """Spanish by apertium of every English sentence there is: Ding's, then WordNet's examples not among them.

    One apertium process translates all of them (`sources.apertium_translate`): starting the pipeline once per
    sentence would take hours. `sample` reads only about that many sentences of each source (quick checks).
    """
    english: list[tuple[str, str]] = []
    seen: set[str] = set()
    readers = [("ding+apertium", lambda: [p.en for p in sources.ding_pairs(max_lines=_lines(sample))]),
               ("wordnet+apertium", sources.wordnet_sentences)]
    for source, read in readers:
        for text in _optional(read)[:sample]:
            if text.casefold() not in seen:
                seen.add(text.casefold())
                english.append((text, source))
    spanish = sources.apertium_translate([en for en, _ in english])
    return [SentencePair(en=en, target=es, source=source) for (en, source), es in zip(english, spanish)]


def _lines(sample: int | None) -> int | None:
    """Ding lines to read for about `sample` pairs: sentences are rare in the file, so read plenty."""
    return None if sample is None else 20 * sample


def _optional(read: Callable[[], list]) -> list:
    """What a source reader gives, or nothing where its package is not installed (the corpus takes what there is)."""
    try:
        return read()
    except FileNotFoundError:
        return []


def _gettext_split(lang: str, sample: int | None) -> tuple[list[SentencePair], list[SentencePair]]:
    """gettext pairs of `lang` as (sentences, phrases): sentence-like on both sides, or not."""
    files = gettext_files(lang)
    pairs = gettext_pairs(lang, files=files if sample is None else files[:3])
    is_pair_sentence = [sources.is_sentence(p.en) and sources.is_sentence(p.target) for p in pairs]
    return ([p for p, yes in zip(pairs, is_pair_sentence) if yes][:sample],
            [p for p, yes in zip(pairs, is_pair_sentence) if not yes][:sample])


def parallel_corpus(pair: str, kind: str = "sentences", *, sample: int | None = None) -> list[SentencePair]:
    """All the parallel text available offline for 'en-de', 'en-es' or 'en-en', filtered and deduplicated.

    kind 'sentences': Ding examples (en-de), apertium Spanish of Ding and WordNet sentences plus Bible verses
    (en-es), Ding and WordNet English (en-en), and the sentence-like gettext entries; 'phrases': Ding's multi-word
    phrases and the other gettext entries; 'all': both. Each source is filtered with its limits (SENTENCE_LIMITS,
    PHRASE_LIMITS, BIBLE_LIMITS: words, length ratio, Latin script, target not English copied) and an English text
    appears once, from the first source that has it. Missing packages are skipped: check `count_by_source`.
    `sample` takes at most that many pairs of each source, reading only the start of it (quick checks).
    """
    if pair not in ("en-de", "en-es", "en-en"):
        raise ValueError(f"unknown language pair {pair!r}: use en-de, en-es or en-en")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    lang = pair.split("-")[1]
    gettext_sentences, gettext_phrases = _gettext_split(lang, sample) if lang != "en" else ([], [])
    groups: list[tuple[list[SentencePair], Limits]] = []  # in order of preference
    if kind in ("sentences", "all"):
        if pair == "en-es":
            if shutil.which("apertium") is not None:
                groups.append((apertium_sentence_pairs(sample), SENTENCE_LIMITS))
            keys = ALL_VERSES if sample is None else "Genesis 1:1-Genesis 1:31"
            groups.append((_optional(lambda: bible_verse_pairs(keys)), BIBLE_LIMITS))
        else:
            groups.append((_optional(lambda: sources.ding_pairs(max_lines=_lines(sample))), SENTENCE_LIMITS))
        if pair == "en-en":
            wordnet = _optional(sources.wordnet_sentences)[:sample]
            groups.append(([SentencePair(en=s, target=s, source="wordnet") for s in wordnet], SENTENCE_LIMITS))
        else:
            groups.append((gettext_sentences, SENTENCE_LIMITS))
    if kind in ("phrases", "all"):
        if pair != "en-es":
            groups.append((_optional(lambda: ding_phrase_pairs(max_lines=sample)), PHRASE_LIMITS))
        if pair != "en-en":
            groups.append((gettext_phrases, PHRASE_LIMITS))
    seen: set[str] = set()
    out: list[SentencePair] = []
    for pairs, limits in groups:
        if pair == "en-en":
            pairs = [SentencePair(en=p.en, target=p.en, source=p.source) for p in pairs]
        out += clean(pairs[:sample], limits, seen, same_language=pair == "en-en")
    return out


def count_by_source(pairs: Iterable[SentencePair]) -> dict[str, int]:
    """How many pairs each source gave, largest first."""
    return dict(Counter(p.source for p in pairs).most_common())


def licence_of(source: str) -> tuple[str, str]:
    """(what, licence) of a source name as `parallel_corpus` sets it ('gettext:git' -> the gettext entry)."""
    return SOURCE_LICENCES.get(source) or SOURCE_LICENCES.get(source.split(":")[0], (source, "unknown"))


def render_text_card(counts: dict[str, dict[str, int]], *, command: str = "") -> str:
    """Markdown card for a folder of TSVs: pairs per source in each file, and each source's licence.

    `counts` maps a TSV's file name to its `count_by_source`. gettext sources are one per catalogue
    ('gettext:git'); each is under its package's licence, which /usr/share/doc/<package>/copyright states.
    """
    lines = ["# Parallel text exported by `streamst data text`", ""]
    if command:
        lines += ["Rebuild (same Debian package versions give the same text):", "", f"    {command}", ""]
    lines += ["Each line of a TSV is `english<TAB>target<TAB>source`.", "",
              "| file | source | pairs | what | licence |", "|---|---|---|---|---|"]
    for name, by_source in counts.items():
        lines.append(f"| {name} | **all** | {sum(by_source.values())} | | |")
        for source, n in by_source.items():
            what, licence = licence_of(source)
            lines.append(f"| {name} | {source} | {n} | {what} | {licence} |")
    lines += ["", "Redistributing these files redistributes GPL text: keep this card with them.", ""]
    return "\n".join(lines)
