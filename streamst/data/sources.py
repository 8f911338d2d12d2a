"""Offline text sources for synthetic corpora: Ding (en-de), WordNet examples (English), apertium and Bibles (en-es).

Every reader returns plain sentences or (English, target) pairs, deduplicated and in file order; callers shuffle.
Paths are those of the Debian packages `trans-de-en`, `wordnet-base`, `apertium-eng-spa`, `sword-text-web` and
`sword-text-sparv` (see DATA_CARD.md for their licences).
"""
from __future__ import annotations

import itertools
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DING_PATH = Path("/usr/share/trans/de-en")
WORDNET_DIR = Path("/usr/share/wordnet")
BIBLE_MODULES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}


@dataclass(frozen=True)
class SentencePair:
    """One English sentence and its translation, with the source it came from (for the data card)."""

    en: str
    target: str
    source: str


_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "\u00a0": " "})
_DING_NOTES = re.compile(r"[{}\[\]/()…<>=+|~#_*@]")


def normalize(text: str) -> str:
    """Straight quotes and single spaces: the same spelling for the same word across sources."""
    return " ".join(text.translate(_QUOTES).split())


def is_sentence(text: str, *, min_words: int = 2, max_words: int = 40) -> bool:
    """Sentence-like: capitalised, ends in . ? or !, a sensible number of words, has letters."""
    words = text.split()
    return (min_words <= len(words) <= max_words and text[:1].isupper() and text[-1:] in ".?!"
            and any(c.isalpha() for c in text))


def ding_lines(path: Path = DING_PATH, max_lines: int | None = None) -> Iterator[str]:
    """The Ding dictionary's lines (only the first `max_lines`, for quick checks); a clear error where it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"Ding dictionary not found at {path} (apt-get install trans-de-en)")
    with path.open(encoding="utf-8") as f:
        yield from itertools.islice(f, max_lines)


def ding_pairs(path: Path = DING_PATH, *, max_lines: int | None = None) -> list[SentencePair]:
    """Sentence-like `de :: en` example pairs of the Ding dictionary, one per distinct English sentence.

    Each line holds sub-entries separated by ' | ' on both sides, in the same order; within a sub-entry
    alternatives are separated by '; ' and the first one is kept. Entries with {} [] () or / notes are dropped.
    `max_lines` reads only the first lines of the file (for quick checks).
    """
    pairs: list[SentencePair] = []
    seen: set[str] = set()
    for line in ding_lines(path, max_lines):
        if line.startswith("#") or " :: " not in line:
            continue
        de_side, en_side = line.rstrip("\n").split(" :: ", 1)
        de_parts, en_parts = de_side.split(" | "), en_side.split(" | ")
        if len(de_parts) != len(en_parts):
            continue
        for de, en in zip(de_parts, en_parts):
            de, en = normalize(de.split("; ")[0]), normalize(en.split("; ")[0])
            if _DING_NOTES.search(de) or _DING_NOTES.search(en):
                continue
            if is_sentence(de) and is_sentence(en) and en not in seen:
                seen.add(en)
                pairs.append(SentencePair(en=en, target=de, source="ding"))
    return pairs


_WORDNET_EXAMPLE = re.compile(r'"([^"]+)"')


def wordnet_sentences(folder: Path = WORDNET_DIR, *, min_words: int = 4) -> list[str]:
    """WordNet's quoted usage examples made sentence-like (first letter capitalised, final full stop)."""
    files = [folder / f"data.{pos}" for pos in ("noun", "verb", "adj", "adv")]
    if not any(p.is_file() for p in files):
        raise FileNotFoundError(f"WordNet data not found in {folder} (apt-get install wordnet-base)")
    out: list[str] = []
    seen: set[str] = set()
    for path in files:
        if not path.is_file():
            continue
        for line in path.open(encoding="utf-8", errors="replace"):
            if line.startswith("  ") or "|" not in line:
                continue
            for example in _WORDNET_EXAMPLE.findall(line.split("|", 1)[1]):
                text = normalize(example.strip(" ;,"))
                if not text or re.search(r"[<>{}\[\]()|/_*#@=+~]", text):
                    continue
                text = text[0].upper() + text[1:]
                if text[-1] not in ".?!":
                    text += "."
                if is_sentence(text, min_words=min_words) and text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def apertium_translate(sentences: list[str], pair: str = "eng-spa") -> list[str]:
    """Translate English sentences with apertium (rule-based, offline), one output line per input line."""
    if not sentences:
        return []
    if shutil.which("apertium") is None:
        raise FileNotFoundError("apertium not found (apt-get install apertium apertium-eng-spa)")
    if any("\n" in s for s in sentences):
        raise ValueError("apertium_translate: sentences must not contain newlines")
    # A blank line between sentences keeps apertium from joining them.
    text = "\n\n".join(sentences) + "\n"
    result = subprocess.run(["apertium", "-u", pair], input=text, capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.split("\n\n")]
    lines = [normalize(line) for line in lines if line.strip()]
    if len(lines) != len(sentences):
        raise RuntimeError(f"apertium returned {len(lines)} lines for {len(sentences)} sentences")
    return [_spanish_marks(line) for line in lines]


def _spanish_marks(text: str) -> str:
    """Add the opening ¿ or ¡ that apertium leaves out."""
    if text.endswith("?") and "¿" not in text:
        return "¿" + text
    if text.endswith("!") and "¡" not in text:
        return "¡" + text
    return text


# A verse key may follow left-over title text on the same line; whatever precedes the key is dropped.
_VERSE = re.compile(r"((?:[1-3] )?[A-Z][a-z]+(?: (?:of )?[A-Z][a-z]+)* \d+:\d+): ?(.*)$")


# diatheke repeats the title of the WEB's Psalm 151 into many verses of later books.
_STRAY_TITLE = ("This Psalm is a genuine one of David, though extra, composed when he fought in single combat with "
                "Goliath.")


def _bible_verses(module: str) -> dict[str, str]:
    """All verses of a sword module through `diatheke`, keyed 'Book chapter:verse'."""
    if shutil.which("diatheke") is None:
        raise FileNotFoundError("diatheke not found (apt-get install diatheke sword-text-web sword-text-sparv)")
    out = subprocess.run(["diatheke", "-b", module, "-f", "plain", "-k", "Genesis 1:1-Revelation 22:21"],
                         capture_output=True, text=True, check=True).stdout
    verses: dict[str, list[str]] = {}
    key = None
    for line in out.splitlines():
        match = _VERSE.search(line)
        if match:
            key = match.group(1)
            verses[key] = [match.group(2)]
        elif key is not None and line.strip() and not line.startswith("("):
            verses[key].append(line)
    return {k: normalize(" ".join(v).replace(_STRAY_TITLE, " ")) for k, v in verses.items()}


def bible_pairs(*, max_words: int = 30) -> list[SentencePair]:
    """Verse-aligned English (World English Bible) and Spanish (Reina-Valera 1909) verses, both sentence-like."""
    english, spanish = _bible_verses(BIBLE_MODULES["en"]), _bible_verses(BIBLE_MODULES["es"])
    pairs: list[SentencePair] = []
    seen: set[str] = set()
    for key, en in english.items():
        es = spanish.get(key)
        if key.startswith("Psalms"):  # psalm titles run into the verses in diatheke's plain output
            continue
        if not es or en in seen or re.search(r"[<>{}\[\]|/_*#@=+~]", en + es):
            continue
        first, _, rest = es.partition(" ")
        if len(first) > 1 and first.isupper():  # chapters open in capitals: 'EN el principio' -> 'En el principio'
            es = f"{first[0]}{first[1:].lower()} {rest}"
        if is_sentence(en, min_words=3, max_words=max_words) and is_sentence(es, min_words=3, max_words=max_words):
            seen.add(en)
            pairs.append(SentencePair(en=en, target=es, source="bible"))
    return pairs


def write_pairs_tsv(pairs: list[SentencePair], path: Path) -> None:
    """Save pairs as `english<TAB>target<TAB>source` lines, so the text can travel to a machine with no apt."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for p in pairs:
            if any("\t" in t or "\n" in t for t in (p.en, p.target, p.source)):
                raise ValueError(f"tab or newline inside a sentence: {p.en!r}")
            f.write(f"{p.en}\t{p.target}\t{p.source}\n")


def read_pairs_tsv(path: Path) -> list[SentencePair]:
    """Read pairs written by write_pairs_tsv; a malformed line is an error naming the file and line."""
    pairs: list[SentencePair] = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or not fields[0].strip() or not fields[1].strip():
                raise ValueError(f"{path}:{number}: expected 'english<TAB>target<TAB>source'")
            pairs.append(SentencePair(en=fields[0], target=fields[1], source=fields[2]))
    return pairs


def sentence_pairs(pair: str, text_dir: Path | None = None) -> list[SentencePair]:
    """All sentence pairs available offline for 'en-de', 'en-es' or 'en-en' (English ASR, target = source).

    With `text_dir`, read `<text_dir>/<pair>.tsv` (made by `streamst data text`) instead of the apt packages.
    """
    if text_dir is not None:
        path = Path(text_dir) / f"{pair}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: make it with `streamst data text --out {text_dir}`")
        return read_pairs_tsv(path)
    if pair == "en-de":
        return ding_pairs()
    if pair == "en-es":
        english = [p.en for p in ding_pairs()]
        spanish = apertium_translate(english)
        pairs = [SentencePair(en=e, target=s, source="ding+apertium") for e, s in zip(english, spanish)]
        if shutil.which("diatheke") is not None:
            seen = {p.en for p in pairs}
            pairs += [p for p in bible_pairs() if p.en not in seen]
        return pairs
    if pair == "en-en":
        english = [p.en for p in ding_pairs()]
        seen = set(english)
        pairs = [SentencePair(en=e, target=e, source="ding") for e in english]
        if WORDNET_DIR.is_dir():
            pairs += [SentencePair(en=e, target=e, source="wordnet") for e in wordnet_sentences() if e not in seen]
        return pairs
    raise ValueError(f"unknown language pair {pair!r}: use en-de, en-es or en-en")
