"""`streamst eval` end to end on a hand-built MuST-C layout of the tiny corpus, scored by the tiny ASR model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

GAP_S = 0.6


def build_tiny_mustc(root: Path, corpus: list[tuple[Path, str]], talks: int = 2, per_talk: int = 3,
                     split: str = "tst-COMMON", first: int = 0) -> Path:
    """MuST-C v1 layout (pair en-en) whose talks are tiny-corpus sentences joined by short silences."""
    split_dir = root / "en-en" / "data" / split
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    yaml_lines, texts = [], []
    for t in range(talks):
        pieces, offset = [np.zeros(int(GAP_S * 16000), np.float32)], GAP_S
        for k in range(per_talk):
            wav, text = corpus[(first + t * per_talk + k) % len(corpus)]
            audio, rate = sf.read(wav, dtype="float32")
            assert rate == 16000
            duration = len(audio) / 16000
            yaml_lines.append(f"- {{duration: {duration:.6f}, offset: {offset:.6f}, speaker_id: spk{t}, "
                              f"wav: talk{t}.wav}}\n")
            texts.append(text)
            pieces += [audio, np.zeros(int(GAP_S * 16000), np.float32)]
            offset += duration + GAP_S
        sf.write(split_dir / "wav" / f"talk{t}.wav", np.concatenate(pieces), 16000, subtype="PCM_16")
    (split_dir / "txt" / f"{split}.yaml").write_text("".join(yaml_lines))
    (split_dir / "txt" / f"{split}.en").write_text("".join(t + "\n" for t in texts))
    return root
