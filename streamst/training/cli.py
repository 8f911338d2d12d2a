"""`streamst train`: train an offline speech translation or recognition model on a MuST-C-layout corpus.

One process on the CPU or one GPU; several GPUs with `torchrun --nproc_per_node N -m streamst.cli train ...`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

# model sizes: ModelConfig overrides (base is ModelConfig's defaults)
SIZES: dict[str, dict] = {
    "tiny": dict(d_model=96, n_heads=4, enc_layers=3, dec_layers=1, sub_channels=16, conv_kernel=7, left_frames=32),
    "small": dict(d_model=192, n_heads=4, enc_layers=6, dec_layers=3, sub_channels=32, conv_kernel=15),
    "base": dict(d_model=256, n_heads=4, enc_layers=6, dec_layers=3, sub_channels=64, conv_kernel=15),
}
# --option -> ModelConfig field
MODEL_OPTIONS = {"d_model": "d_model", "heads": "n_heads", "enc_layers": "enc_layers", "dec_layers": "dec_layers",
                 "ff_mult": "ff_mult", "conv_kernel": "conv_kernel", "sub_channels": "sub_channels",
                 "chunk_frames": "chunk_frames", "left_frames": "left_frames", "dropout": "dropout"}
# TrainConfig fields that fix the model and its tokenizers: a resumed run keeps them
FIXED_ON_RESUME = ("pair", "src_vocab", "tgt_vocab", "init_encoder", "init_model", "seed")
DEFAULT_MAX_FRAMES = {"cpu": 6000, "cuda": 20000}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=["streamst", "causal-whisper", "whisper-st"],
                   help="streamst: the project's own model on a corpus (default); causal-whisper: fine-tune Whisper "
                        "tiny.en for the causal encoder on speech made on the fly (takes --out, --resume, --lr, "
                        "--seed, --device, --steps, --time-limit, --dev-every 0; see streamst/whisper/finetune.py); "
                        "whisper-st: a translation decoder (--pair en-de or en-es) over the frozen causal encoder, "
                        "from its frames cached in --corpus (made there first when empty; see "
                        "streamst/whisper/st_cache.py and st_train.py)")
    p.add_argument("--corpus", help="MuST-C-layout root (holds <pair>/data/train, dev, ...)")
    p.add_argument("--pair", help="language pair, e.g. en-de, en-es, or en-en for English ASR (default en-de)")
    p.add_argument("--out", help="run folder: checkpoints, model.pt, model.md (default runs/<pair>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="total optimiser updates (default 20000)")
    g.add_argument("--max-frames", type=int, help="padded 10 ms feature frames per batch and process "
                                                  "(default 6000 on CPU, 20000 on GPU)")
    g.add_argument("--accum", type=int, help="batches accumulated per update (default 1)")
    g.add_argument("--lr", type=float, help="peak learning rate (default 1.5e-3)")
    g.add_argument("--warmup", type=int, help="linear warm-up updates, then inverse square root (default 1000)")
    g.add_argument("--ctc-weight", type=float, help="weight of the CTC loss (default 0.3)")
    g.add_argument("--label-smoothing", type=float, help="(default 0.1)")
    g.add_argument("--chunks", help="encoder attention chunks sampled in training, comma-separated (default 4,8,16,32)")
    g.add_argument("--seed", type=int, help="(default 0)")
    g.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="stop this many minutes after starting (feature preparation included), then save, average "
                        "and write the card as at --steps (for a lent machine's fixed budget)")
    g.add_argument("--device", help="auto, cpu or cuda (default auto: cuda when available; bf16 on GPU, fp32 on CPU)")
    m = p.add_argument_group("model")
    m.add_argument("--model-size", choices=sorted(SIZES), help="preset (default small); options below override it")
    for opt, fld in MODEL_OPTIONS.items():
        m.add_argument("--" + opt.replace("_", "-"), type=float if fld == "dropout" else int, dest=opt)
    m.add_argument("--src-vocab", type=int, help="source (CTC) SentencePiece vocabulary (default 1000)")
    m.add_argument("--tgt-vocab", type=int, help="target SentencePiece vocabulary (default 1000)")
    m.add_argument("--init-encoder", metavar="CKPT",
                   help="start encoder, CTC head, source tokenizer and CMVN from this (ASR) model: the ASR-first recipe")
    m.add_argument("--init-model", metavar="CKPT",
                   help="start every weight, both tokenizers and CMVN from this streamst model of the same pair "
                        "(fine-tuning: its shape replaces the model options); with --recipe whisper-st, a "
                        "translation model (e.g. en-de) whose decoder a new run starts from; with --recipe causal-whisper, "
                        "a causal Whisper (e.g. whisper-tiny.en-causal) whose adapters a new run starts from")
    o = p.add_argument_group("checkpoints and evaluation")
    o.add_argument("--save-every", type=int, help="updates between checkpoints (default 500)")
    o.add_argument("--keep-last", type=int, help="step checkpoints kept on disk (default 10; 0 keeps all)")
    o.add_argument("--average-last", type=int, help="final model = mean of the last N checkpoints (default 5)")
    o.add_argument("--dev-every", type=int, help="dev BLEU/WER every N updates (default 2000; 0: only at the end)")
    o.add_argument("--dev-segments", type=int, help="dev segments scored (default 200; 0: none)")
    o.add_argument("--name", help="model name in the model card (default: the --out folder's name)")
    o.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")


def _given(args: argparse.Namespace, names) -> dict:
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def _check_corpus(corpus: str, pair: str) -> None:
    root = Path(corpus)
    if not root.is_dir():
        raise ValueError(f"corpus folder {root} does not exist (build one with `streamst data synth --out {root}`)")
    if not (root / pair / "data" / "train").is_dir():
        pairs = sorted(p.name for p in root.iterdir() if (p / "data").is_dir())
        raise ValueError(f"{root} has no {pair}/data/train (MuST-C layout); pairs found: {', '.join(pairs) or 'none'}")


def build_config(args: argparse.Namespace):
    """TrainConfig from defaults, the saved config of a resumed run, and the options given."""
    from streamst.training.trainer import TrainConfig, resolve_device

    pair = args.pair or "en-de"
    out = Path(args.out or f"runs/{pair}")
    state = out / "last.state"
    saved: dict = {}
    if args.resume and (out / "train_config.json").is_file():
        saved = json.loads((out / "train_config.json").read_text())
        saved["chunks"] = tuple(saved.get("chunks", (4, 8, 16, 32)))
    elif state.exists():
        raise ValueError(f"{out} already holds a run (last.state); pass --resume to continue it or choose another --out")
    given = _given(args, ("corpus", "pair", "steps", "max_frames", "accum", "lr", "warmup", "ctc_weight",
                          "label_smoothing", "seed", "device", "src_vocab", "tgt_vocab", "init_encoder", "init_model",
                          "time_limit", "save_every",
                          "keep_last", "average_last", "dev_every", "dev_segments", "name"))
    if args.chunks:
        try:
            given["chunks"] = tuple(int(c) for c in args.chunks.split(","))
        except ValueError:
            raise ValueError(f"--chunks must be comma-separated integers, got {args.chunks!r}") from None
    model = dict(SIZES[args.model_size or "small"]) if not saved or args.model_size else {}
    model.update({MODEL_OPTIONS[k]: v for k, v in _given(args, MODEL_OPTIONS).items()})
    if saved:
        for k in FIXED_ON_RESUME:
            if k in given and given[k] != saved.get(k):
                raise ValueError(f"--{k.replace('_', '-')} {given[k]} differs from the run being resumed "
                                 f"({saved.get(k)!r}); it cannot change")
        for k, v in model.items():
            if saved["model"].get(k, v) != v:
                raise ValueError(f"model option {k}={v} differs from the run being resumed ({saved['model'][k]})")
        model = {**saved["model"], **model}
    base = {"steps": 20000, "save_every": 500, "keep_last": 10, "average_last": 5, "dev_every": 2000}
    merged = {**base, **saved, **given, "model": model, "out": str(out)}
    if not merged.get("corpus"):
        raise ValueError("--corpus is required (the MuST-C-layout root)")
    _check_corpus(merged["corpus"], merged.get("pair", pair))
    device = resolve_device(merged.get("device", "auto"))
    merged.setdefault("max_frames", DEFAULT_MAX_FRAMES[device.type])
    for k in ("steps", "max_frames", "accum", "save_every", "warmup"):
        if k in merged and merged[k] < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1")
    merged["progress"] = sys.stderr.isatty() if args.progress is None else args.progress
    command = "streamst train " + shlex.join(_argv_of(args))
    # a resumed run's card shows how it began, then each resume
    merged["command"] = f"{saved['command']} && {command}" if saved.get("command") else command
    names = set(TrainConfig.__dataclass_fields__)
    return TrainConfig(**{k: v for k, v in merged.items() if k in names})


def _argv_of(args: argparse.Namespace) -> list[str]:
    """The options given, as a command line (for the model card)."""
    argv: list[str] = []
    for k, v in vars(args).items():
        if k == "command" or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        argv += [flag] if v is True else [flag, str(v)]
    return argv


def run_causal_whisper(args: argparse.Namespace) -> int:
    """`--recipe causal-whisper`: LoRA fine-tuning of Whisper tiny.en for the causal encoder."""
    from streamst.checkpoint import resolve_model
    from streamst.whisper import finetune

    out = Path(args.out or "runs/whisper-tiny.en-causal")
    if (out / "last.pt").exists() and not args.resume:
        raise ValueError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    argv = ["--out", str(out), "--minutes", str(args.time_limit or 60.0)]
    if args.dev_every == 0:
        argv += ["--eval-every", "0"]
    if args.init_model:
        argv += ["--init", str(resolve_model(args.init_model))]
    for flag, value in (("--lr", args.lr), ("--seed", args.seed), ("--device", args.device), ("--steps", args.steps)):
        if value is not None and value != "auto":
            argv += [flag, str(value)]
    return finetune.main(argv)


def run_whisper_st(args: argparse.Namespace) -> int:
    """`--recipe whisper-st`: train a translation decoder over the causal Whisper encoder's cached frames."""
    from streamst.checkpoint import resolve_model
    from streamst.whisper import st_cache, st_train

    pair = args.pair or "en-de"
    if pair not in ("en-de", "en-es"):
        raise ValueError(f"--recipe whisper-st translates English to German or Spanish: --pair en-de or en-es, not {pair}")
    out = Path(args.out or f"runs/whisper-st-{pair}")
    if (out / "last.pt").exists() and not args.resume:
        raise ValueError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    cache = Path(args.corpus or out / "cache")
    if not any(cache.glob("train-*.pt")):
        print(f"speaking and encoding every sentence and phrase pair into {cache} (about 20 minutes per 10,000 "
              "sentences on one core)", flush=True)
        st_cache.build_cache(cache, st_cache.collect_examples("all"))
    argv = ["--cache", str(cache), "--lang", pair.split("-")[1], "--out", str(out),
            "--minutes", str(args.time_limit or 60.0)]
    if args.dev_every == 0:
        argv += ["--eval-every", "0"]
    if args.init_model:
        argv += ["--init", str(resolve_model(args.init_model))]
    for flag, value in (("--lr", args.lr), ("--seed", args.seed), ("--steps", args.steps)):
        if value is not None:
            argv += [flag, str(value)]
    return st_train.main(argv)


def run(args: argparse.Namespace) -> int:
    from streamst.training.trainer import train

    if args.recipe == "causal-whisper":
        return run_causal_whisper(args)
    if args.recipe == "whisper-st":
        return run_whisper_st(args)

    cfg = build_config(args)
    if args.resume and not (Path(cfg.out) / "last.state").exists():
        print(f"nothing to resume in {cfg.out}: starting a new run", flush=True)
    final = train(cfg, log=lambda msg: print(msg, flush=True))
    if os.environ.get("RANK", "0") == "0":
        print(f"model: {final}\ncard: {final.with_suffix('.md')}", flush=True)
    return 0
