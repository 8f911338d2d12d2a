"""`streamst sweep`: one model over several policy settings on one test set; a latency-quality table and plot.

Each setting is a full `streamst eval` run in `OUT/<policy>/` (so a killed sweep resumes too); the offline
policy gives the quality ceiling drawn as a horizontal line. Writes `OUT/sweep.tsv`, `OUT/sweep.md` and
`OUT/sweep.png` (quality against LAAL, StreamLAAL for long-form, one curve per policy family).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import runner

OFFLINE = "offline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    runner.add_data_arguments(parser)
    parser.add_argument("--policies", required=True,
                        help='policy specs separated by ";", e.g. "waitk:k=1;waitk:k=3;alignatt:frames=4"')
    parser.add_argument("--no-offline", action="store_true", help="skip the offline reference run")
    parser.add_argument("--out", required=True, help="output folder")


def parse_policies(text: str) -> list[str]:
    """Canonical, de-duplicated specs in the order given (each checked by parse_policy)."""
    from streamst.policies import parse_policy

    specs: list[str] = []
    for item in filter(None, (p.strip() for p in text.split(";"))):
        spec = parse_policy(item).spec()
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("--policies lists no policy")
    return specs


def columns(longform: bool, task: str) -> tuple[str, list[str]]:
    """(quality column, latency columns) of the table for this mode and task."""
    quality = "WER" if task == "asr" else "BLEU"
    if longform:
        return quality, ["StreamLAAL", "LongYAAL", "StreamLAAL_CA", "LongYAAL_CA"]
    return quality, ["AL", "LAAL", "YAAL", "AL_CA", "LAAL_CA", "YAAL_CA"]


def run(args: argparse.Namespace) -> int:
    specs = parse_policies(args.policies)
    runner.resolve_model_and_task(args)  # the default model, the task and the pair check, once for all settings
    offline_spec = parse_policies(OFFLINE)[0]
    if not args.no_offline and offline_spec not in specs:
        specs.append(offline_spec)
    runner.check_data(runner.config_from_args(args, specs[0]))  # a wrong path fails before anything is written
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for k, spec in enumerate(specs, 1):
        config = runner.config_from_args(args, spec)
        print(f"streamst sweep: [{k}/{len(specs)}] {spec}", file=sys.stderr)
        try:
            scores = runner.evaluate(config, out / runner.slug(spec), workers=args.workers,
                                     progress=not args.no_progress)
        except ValueError as e:
            print(f"streamst sweep: {spec} failed: {e}", file=sys.stderr)
            rows.append({"policy": spec, "error": str(e)})
            continue
        rows.append({"policy": spec, **scores["scores"], "RTF": scores["RTF"], "instances": scores["instances"]})
    quality, latencies = columns(args.longform, args.task)
    write_tables(out, rows, quality, latencies)
    try:
        from . import plots

        offline = next((r for r in rows if r["policy"].split(":")[0] == OFFLINE and "error" not in r), None)
        curves = [r for r in rows if r is not offline and "error" not in r]
        plots.plot_sweep(curves, out / "sweep.png", quality, offline, "StreamLAAL" if args.longform else "LAAL")
    except ImportError as e:
        print(f"streamst sweep: no sweep.png ({e}); install matplotlib", file=sys.stderr)
    print((out / "sweep.md").read_text(), end="")
    return 0 if all("error" not in r for r in rows) else 1


def _cell(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_tables(out: Path, rows: list[dict], quality: str, latencies: list[str]) -> None:
    """sweep.tsv (full precision) and sweep.md (rounded) with one row per policy setting."""
    header = ["policy", quality, *latencies, "RTF"]
    tsv = ["\t".join(header)]
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "error" in row:
            tsv.append("\t".join([row["policy"]] + ["error"] * (len(header) - 1)))
            md.append(f"| {row['policy']} | failed: {row['error']} |" + " |" * (len(header) - 2))
            continue
        values = [row.get(quality), *(row.get(k) for k in latencies), row.get("RTF")]
        tsv.append("\t".join([row["policy"]] + ["" if v is None else repr(v) for v in values]))
        md.append("| " + " | ".join([row["policy"], _cell(values[0], 1)] + [_cell(v, 0) for v in values[1:-1]]
                                    + [_cell(values[-1], 3)]) + " |")
    (out / "sweep.tsv").write_text("\n".join(tsv) + "\n", encoding="utf-8")
    (out / "sweep.md").write_text("\n".join(md) + "\n", encoding="utf-8")
