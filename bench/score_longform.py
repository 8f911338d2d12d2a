"""Time `streamst score` on the 2,641-segment simulstream fixture next to the reference tools.

Usage: python bench/score_longform.py [--oracles .venv-oracles] [--lang de]
Prints one line per tool with wall-clock seconds and the values it reports. The reference tools run from
.venv-oracles (made by .ci/oracles.sh): simulstream_score_latency (StreamLAAL) and omnisteval longform (LongYAAL).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIXTURE = Path("/work/shared/fixtures/omnisteval-examples/simulstream_example")


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed:\n{proc.stderr[-2000:]}")
    return elapsed, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixture", type=Path, default=FIXTURE)
    ap.add_argument("--oracles", type=Path, default=Path(".venv-oracles"))
    ap.add_argument("--lang", default="de")
    args = ap.parse_args()
    d = args.fixture
    log, seg, ref = d / "simulstream_log.jsonl", d / "ref_segments.yaml", d / "references.txt"
    t, out = timed([sys.executable, "-m", "streamst.cli", "score", str(log), "--segments", str(seg), "--references", str(ref),
                    "--computation-aware", "--lang", args.lang, "--json"])
    print(f"streamst score (StreamLAAL + LongYAAL + BLEU/chrF/WER, CA too): {t:.1f} s  {[x for x in out.splitlines() if x.startswith('{')][-1][:200]}")
    bin_dir = args.oracles / "bin"
    if not bin_dir.exists():
        print("reference tools: .venv-oracles missing (run .ci/oracles.sh)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text("detokenizer_type: simuleval\nlatency_unit: spm\n")
        t, out = timed([str(bin_dir / "simulstream_score_latency"), "--eval-config", str(cfg), "--log-file", str(log),
                        "--audio-definition", str(seg), "--reference", str(ref), "--scorer", "stream_laal"])
        line = [x for x in out.splitlines() if "Latency scores" in x]
        print(f"simulstream 1.0.0 simulstream_score_latency (StreamLAAL, CA too): {t:.1f} s  {line[-1] if line else ''}")
        t, out = timed([str(bin_dir / "omnisteval"), "longform", "--speech_segmentation", str(seg), "--ref_sentences_file",
                        str(ref), "--hypothesis_file", str(log), "--hypothesis_format", "simulstream",
                        "--simulstream_config_file", str(cfg), "--word_level", "--lang", args.lang,
                        "--output_folder", str(Path(tmp) / "omni")])
        scores = (Path(tmp) / "omni" / "scores.tsv").read_text().replace("\n", " ")
        print(f"OmniSTEval 0.1.10 omnisteval longform (LongYAAL + BLEU/chrF, CA too): {t:.1f} s  {scores[:200]}")


if __name__ == "__main__":
    main()
