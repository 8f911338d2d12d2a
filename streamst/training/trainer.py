"""Train on a MuST-C-layout split: cached features, length-bucketed batches, AdamW with warm-up, periodic
atomic checkpoints and exact resume (model, optimiser, scheduler, RNG and step are all saved).

One process trains on the CPU (fp32) or one GPU (bf16 autocast); under `torchrun` (WORLD_SIZE > 1) each
process takes every WORLD_SIZE-th bucketed batch and DistributedDataParallel averages the gradients; rank 0
alone writes files. At the end the last step checkpoints can be averaged into `model.pt`, which gets a
model card (`model.md`) with data, size, compute and dev scores.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from streamst.checkpoint import read_checkpoint, save_checkpoint
from streamst.data.mustc import iter_segment_audio, read_split_checked
from streamst.features import utterance_features
from streamst.model import ModelConfig, SpeechTranslator
from streamst.tokenizer import Tokenizer
from streamst.training.step import Batch, collate, loss_fn, spec_augment

# ModelConfig fields an encoder initialisation (--init-encoder) must share with the model being trained
ENCODER_FIELDS = ("n_mels", "d_model", "n_heads", "enc_layers", "ff_mult", "conv_kernel", "sub_channels", "max_rel",
                  "chunk_frames", "left_frames")
_SHOWN_PROBLEMS = 50


@dataclass
class TrainConfig:
    corpus: str
    pair: str = "en-de"
    out: str = "runs/model"
    steps: int = 20000
    max_frames: int = 6000  # feature frames (10 ms) per batch
    lr: float = 1.5e-3
    warmup: int = 1000
    weight_decay: float = 0.01
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    chunks: tuple[int, ...] = (4, 8, 16, 32)
    src_vocab: int = 1000
    tgt_vocab: int = 1000
    accum: int = 1
    save_every: int = 500
    seed: int = 0
    model: dict = field(default_factory=dict)  # ModelConfig overrides
    device: str = "auto"  # auto (cuda if available), cpu, cuda, cuda:N
    init_encoder: str = ""  # ASR checkpoint whose encoder, CTC head, source tokenizer and CMVN start the model
    init_model: str = ""  # streamst model whose every weight, both tokenizers and CMVN start the run (fine-tuning)
    time_limit: float = 0.0  # minutes for this invocation (data preparation included), then save and finish as at --steps
    average_last: int = 0  # final model = mean of the last N step checkpoints (0 or 1: the last weights)
    keep_last: int = 0  # delete older step checkpoints beyond this many (0 keeps all)
    dev_every: int = 0  # dev BLEU/WER every N steps (0: only at the end)
    dev_segments: int = 200  # dev segments scored (0: no dev evaluation)
    progress: bool = False  # tqdm bar on stderr
    name: str = ""  # model name for the card (default: the output folder's name)
    command: str = ""  # command line, for the card


@dataclass
class Runtime:
    """Where this process runs: its rank among `world` processes and its device."""

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; an explicit cuda request without a GPU is an error."""
    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA GPU (use --device cpu)")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r}: use cpu or cuda")
    return device


def start_runtime(device_name: str) -> Runtime:
    """One process, or one rank of a `torchrun` job (WORLD_SIZE/RANK/LOCAL_RANK set by torchrun)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if world <= 1:
        return Runtime(0, 1, device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device)


def prepare_split_checked(cfg: TrainConfig, split: str, log: Callable[[str], None]
                          ) -> tuple[list[tuple[torch.Tensor, str, str]], list[str]]:
    """(fp16 features, source, target) per segment, cached in the output folder, and the skipped entries."""
    cache = Path(cfg.out) / f"feats-{split}.pt"
    if cache.exists():
        cached = torch.load(cache, weights_only=True)
        problems = list(cached.get("problems", []))
        if problems:
            log(f"{split}: {len(problems)} manifest entries were skipped when the feature cache was built "
                f"(listed in {Path(cfg.out) / f'skipped-{split}.txt'})")
        return cached["items"], problems
    segments, found = read_split_checked(cfg.corpus, cfg.pair, split)
    problems = [str(p) for p in found]
    items = []
    for seg, audio in iter_segment_audio(segments):
        if audio.size < 1600:
            problems.append(f"{seg.wav}:{seg.index + 1}: segment shorter than 0.1 s")
            continue
        items.append((utterance_features(torch.from_numpy(audio)).half(), seg.source, seg.target))
    for p in problems[:_SHOWN_PROBLEMS]:
        log(f"skipped {p}")
    if len(problems) > _SHOWN_PROBLEMS:
        log(f"... and {len(problems) - _SHOWN_PROBLEMS} more skipped entries")
    cache.parent.mkdir(parents=True, exist_ok=True)
    if problems:
        (cache.parent / f"skipped-{split}.txt").write_text("".join(p + "\n" for p in problems), encoding="utf-8")
        log(f"{split}: {len(problems)} bad manifest entries skipped, {len(items)} segments kept")
    torch.save({"items": items, "problems": problems}, cache.with_suffix(".tmp"))
    os.replace(cache.with_suffix(".tmp"), cache)
    return items, problems


def prepare_split(cfg: TrainConfig, split: str, log: Callable[[str], None]) -> list[tuple[torch.Tensor, str, str]]:
    """(fp16 features, source, target) per segment, cached in the output folder."""
    return prepare_split_checked(cfg, split, log)[0]


def bucket_batches(lengths: list[int], max_frames: int, gen: random.Random) -> list[list[int]]:
    """Group indices of similar length so each batch holds about `max_frames` padded frames."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], gen.random()))
    batches, cur, longest = [], [], 0
    for i in order:
        longest_new = max(longest, lengths[i])
        if cur and longest_new * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest_new = [], lengths[i]
        cur.append(i)
        longest = longest_new
    if cur:
        batches.append(cur)
    gen.shuffle(batches)
    return batches


class JointLoss(nn.Module):
    """The training loss as a module, so DistributedDataParallel sees one forward per step."""

    def __init__(self, net: SpeechTranslator, ctc_weight: float, label_smoothing: float):
        super().__init__()
        self.net, self.ctc_weight, self.label_smoothing = net, ctc_weight, label_smoothing

    def forward(self, batch: Batch, chunk: int):
        # tensors the loss creates without a device (masks, positions) go where the batch is
        with torch.device(batch.feats.device):
            return loss_fn(self.net, batch, chunk, ctc_weight=self.ctc_weight, label_smoothing=self.label_smoothing)


def _to_device(b: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return b
    return Batch(*(getattr(b, f).to(device, non_blocking=True) for f in Batch.__dataclass_fields__))


def _main_first(rt: Runtime, fn: Callable):
    """Run `fn` on rank 0 first (it writes caches), then on the other ranks (they read them)."""
    if not rt.main:
        rt.barrier()
    result = fn()
    if rt.main:
        rt.barrier()
    return result


def _tokenizers_and_cmvn(cfg: TrainConfig, out: Path, items, init: dict | None):
    """Tokenizers and feature statistics, made once per run and kept in `tokenizers.pt` for resumes."""
    tok_path = out / "tokenizers.pt"
    if tok_path.exists():
        toks = torch.load(tok_path, weights_only=True)
        src_tok, tgt_tok = Tokenizer(toks["src"]), Tokenizer(toks["tgt"])
        if "cmvn_mean" in toks:
            return src_tok, tgt_tok, toks["cmvn_mean"], toks["cmvn_std"]
    else:
        same = cfg.pair.split("-")[0] == cfg.pair.split("-")[1]
        if init is not None:
            src_tok = Tokenizer(init["src_tokenizer"])
        else:
            src_tok = Tokenizer.train([s for _, s, _ in items], cfg.src_vocab)
        if cfg.init_model:
            tgt_tok = Tokenizer(init["tgt_tokenizer"])
        else:
            tgt_tok = src_tok if same else Tokenizer.train([t for _, _, t in items], cfg.tgt_vocab)
    if init is not None:
        mean, std = init["cmvn_mean"].float(), init["cmvn_std"].float()
    else:
        sample = torch.cat([f.float() for f, _, _ in items[:2000]])
        mean, std = sample.mean(0), sample.std(0).clamp(min=1e-3)
    if not tok_path.exists():
        torch.save({"src": src_tok.model_proto, "tgt": tgt_tok.model_proto, "cmvn_mean": mean, "cmvn_std": std},
                   tok_path)
    return src_tok, tgt_tok, mean, std


def model_config(cfg: TrainConfig, src_vocab: int, tgt_vocab: int, init: dict | None,
                 log: Callable[[str], None]) -> ModelConfig:
    """Defaults, then the run's overrides, then (with an encoder initialisation) that encoder's shape."""
    merged = {**ModelConfig().to_dict(), **cfg.model}
    if init is not None:
        for k in ENCODER_FIELDS:
            if k in cfg.model and cfg.model[k] != init["config"][k]:
                log(f"{k}={cfg.model[k]} replaced by {init['config'][k]} from the initialising encoder")
            merged[k] = init["config"][k]
    return ModelConfig.from_dict({**merged, "src_vocab": src_vocab, "tgt_vocab": tgt_vocab})


def load_encoder_init(path: str) -> dict:
    """An ASR (or any streamst) checkpoint whose encoder and CTC head start a new model."""
    obj = read_checkpoint(path)
    if obj.get("kind", "streamst") != "streamst":
        raise ValueError(f"{path}: --init-encoder needs a streamst model, not a {obj.get('kind')} checkpoint")
    return obj


def _copy_encoder(net: SpeechTranslator, init: dict) -> None:
    state = init["state_dict"]
    for prefix, module in (("encoder.", net.encoder), ("ctc.", net.ctc)):
        module.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)})


def _progress_bar(cfg: TrainConfig, rt: Runtime, start: int):
    if not (cfg.progress and rt.main):
        return None
    from tqdm import tqdm

    return tqdm(total=cfg.steps, initial=start, unit="step", file=sys.stderr, dynamic_ncols=True, smoothing=0.05)


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    started = time.time()  # --time-limit counts from here, data preparation included
    rt = start_runtime(cfg.device)
    out = Path(cfg.out)
    bar = None
    base_log = log

    def say(msg: str) -> None:
        if not rt.main:
            return
        if bar is None:
            base_log(msg)
        else:
            with bar.external_write_mode(file=sys.stderr):
                base_log(msg)

    state_path = out / "last.state"
    init = None
    if cfg.init_encoder and cfg.init_model:
        raise ValueError("give --init-encoder or --init-model, not both")
    if cfg.init_encoder and not (state_path.exists() and not Path(cfg.init_encoder).exists()):
        init = load_encoder_init(cfg.init_encoder)
        model_config(cfg, 1, 1, init, say)  # reports options the encoder overrides
        cfg.model = {**cfg.model, **{k: init["config"][k] for k in ENCODER_FIELDS}}  # a resume needs no init file
    full_init = None
    if cfg.init_model and not (state_path.exists() and not Path(cfg.init_model).exists()):
        full_init = init = load_encoder_init(cfg.init_model)
        if init.get("task") == "asr" and cfg.pair.split("-")[0] != cfg.pair.split("-")[1]:
            raise ValueError(f"--init-model {cfg.init_model} is an ASR model; use --init-encoder to start a "
                             f"{cfg.pair} model from it")
        keep = {k: v for k, v in init["config"].items() if k not in ("src_vocab", "tgt_vocab", "dropout")}
        cfg.model = {**cfg.model, **keep}  # the whole shape comes from the model being fine-tuned
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.__dict__, indent=1, default=list))
    torch.manual_seed(cfg.seed)
    gen = random.Random(cfg.seed)
    items, problems = _main_first(rt, lambda: prepare_split_checked(cfg, "train", say))
    if not items:
        raise ValueError(f"no usable training segments in {cfg.corpus} ({cfg.pair}, train): "
                         f"{len(problems)} entries were skipped")
    src_tok, tgt_tok, mean, std = _main_first(rt, lambda: _tokenizers_and_cmvn(cfg, out, items, init))
    data = [(f, src_tok.encode(s), tgt_tok.encode(t)) for f, s, t in items]
    mcfg = model_config(cfg, len(src_tok), len(tgt_tok), init, say)
    net = SpeechTranslator(mcfg)
    if full_init is not None:
        net.load_state_dict({k: v.float() for k, v in full_init["state_dict"].items()})
    elif init is not None:
        _copy_encoder(net, init)
    net.to(rt.device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    lr_at = lambda s: min((s + 1) / cfg.warmup, math.sqrt(cfg.warmup / (s + 1)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    step, epoch, batch_pos, elapsed_before, dev_history = 0, 0, 0, 0.0, []
    if rt.rank > 0:  # different dropout and SpecAugment draws per rank; weights come from rank 0 via DDP
        torch.manual_seed(cfg.seed + 7919 * rt.rank)
        gen = random.Random(cfg.seed * 1_000_003 + rt.rank)
    if state_path.exists():
        st = torch.load(state_path, map_location="cpu", weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, epoch, batch_pos = st["step"], st["epoch"], st["batch_pos"]
        elapsed_before, dev_history = st.get("elapsed", 0.0), st.get("dev_history", [])
        if rt.main:
            gen.setstate(st["gen"])
            torch.set_rng_state(st["torch_rng"])
            if rt.device.type == "cuda" and st.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(st["cuda_rng"], rt.device)
        else:
            gen = random.Random(cfg.seed * 1_000_003 + rt.rank + 7919 * step)
        say(f"resumed at step {step} (epoch {epoch}, batch {batch_pos})")
    lengths = [f.shape[0] for f, _, _ in data]
    task = "asr" if cfg.pair.split("-")[0] == cfg.pair.split("-")[1] else "st"
    src_lang, tgt_lang = cfg.pair.split("-")
    dev = _dev_set(cfg, rt, mean, std, say)
    use_bf16 = rt.device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    loss_module: nn.Module = JointLoss(net, cfg.ctc_weight, cfg.label_smoothing)
    if rt.world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            find_unused_parameters=cfg.ctc_weight >= 1.0)  # CTC-only pre-training leaves the decoder unused
    t0 = time.time()
    meta = {"corpus": str(cfg.corpus), "pair": cfg.pair}

    def save() -> Path:
        """last.state (for resuming) and step<N>.pt (for averaging and use); rank 0 only."""
        from streamst.training.average import prune_step_checkpoints

        tmp = state_path.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                    "epoch": epoch, "batch_pos": batch_pos, "gen": gen.getstate(), "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None,
                    "elapsed": elapsed_before + time.time() - t0, "dev_history": dev_history}, tmp)
        os.replace(tmp, state_path)
        path = save_checkpoint(out / f"step{step}.pt", net, src_tok, tgt_tok, mean, std, task=task, src_lang=src_lang,
                               tgt_lang=tgt_lang, meta={**meta, "steps": step})
        prune_step_checkpoints(out, max(cfg.keep_last, cfg.average_last) if cfg.keep_last > 0 else 0)
        return path

    ctc_only = cfg.ctc_weight >= 1.0 and task == "asr"  # pre-training: the decoder is untrained, score CTC

    def run_dev() -> None:
        from streamst.training.evaluate import evaluate_dev

        with autocast():
            scores, _ = evaluate_dev(net, dev, tgt_tok, task, device=rt.device, ctc=ctc_only)
        dev_history.append({"step": step, **scores})
        say(f"dev step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        with open(out / "dev.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(dev_history[-1]) + "\n")

    bar = _progress_bar(cfg, rt, step)
    net.train()
    seen, ema = 0, None
    deadline = started + cfg.time_limit * 60.0 if cfg.time_limit > 0 else math.inf
    timed_out = False  # decided by rank 0 for every process (`_past`), so all leave the loop together
    while step < cfg.steps and not timed_out:
        batches = bucket_batches(lengths, cfg.max_frames, random.Random(cfg.seed * 1000 + epoch))
        if len(batches) < rt.world:
            raise ValueError(f"only {len(batches)} batches for {rt.world} processes: lower --max-frames")
        usable = len(batches) // rt.world * rt.world
        while batch_pos + rt.world <= usable and step < cfg.steps:
            if _past(deadline, rt):
                timed_out = True
                break
            idx = batches[batch_pos + rt.rank]
            b = collate([(((data[i][0].float() - mean) / std), data[i][1], data[i][2]) for i in idx],
                        tgt_tok.bos, tgt_tok.eos)
            b.feats = spec_augment(b.feats, b.feat_lens, gen)
            b = _to_device(b, rt.device)
            chunk = gen.choice(cfg.chunks)
            batch_pos += rt.world
            update = (batch_pos // rt.world) % cfg.accum == 0
            sync = loss_module.no_sync() if rt.world > 1 and not update else contextlib.nullcontext()
            with sync:
                with autocast():
                    loss, parts = loss_module(b, chunk)
                (loss / cfg.accum).backward()
            seen += int(b.feat_lens.sum()) * rt.world
            if update:
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                opt.zero_grad()
                sched.step()
                step += 1
                value = float(loss.detach())
                ema = value if ema is None else 0.98 * ema + 0.02 * value
                speed = seen / 100 / max(time.time() - t0, 1e-6)
                if bar is not None:
                    bar.set_postfix(loss=f"{ema:.3f}", audio=f"{speed:.0f}x", lr=f"{sched.get_last_lr()[0]:.1e}",
                                    refresh=False)
                    bar.update(1)
                if step % 50 == 0:
                    say(f"step {step} epoch {epoch} loss {value:.3f} ce {parts['ce']:.3f} ctc {parts['ctc']:.3f} "
                        f"lr {sched.get_last_lr()[0]:.2e} {speed:.0f}x audio/s")
                if rt.main and step % cfg.save_every == 0:
                    net.eval()
                    p = save()
                    net.train()
                    say(f"saved {p}")
                if rt.main and dev and cfg.dev_every > 0 and step % cfg.dev_every == 0 and step < cfg.steps:
                    run_dev()
        if not timed_out and batch_pos + rt.world > usable:
            epoch, batch_pos = epoch + 1, 0
    if bar is not None:
        bar.close()
        bar = None
    if step < cfg.steps:
        say(f"--time-limit {cfg.time_limit:g} min reached at step {step} of {cfg.steps}")
    net.eval()
    final = out / "model.pt"
    if rt.main:
        save()
        final = _finish(cfg, out, net, dev, dev_history, task, tgt_tok, rt, len(problems), lengths, epoch,
                        batch_pos, elapsed_before + time.time() - t0, mcfg, say)
    rt.barrier()
    return final


def _past(deadline: float, rt: Runtime) -> bool:
    """Whether --time-limit is spent; every process of a torchrun job takes rank 0's answer, so all stop together."""
    if deadline == math.inf:
        return False
    if rt.world == 1:
        return time.time() >= deadline
    flag = torch.tensor([time.time() >= deadline], dtype=torch.int32, device=rt.device)
    torch.distributed.broadcast(flag, src=0)
    return bool(flag.item())


def _dev_set(cfg: TrainConfig, rt: Runtime, mean, std, say) -> list[tuple[torch.Tensor, str]]:
    """A few hundred normalised dev segments with their references (rank 0 only; empty when there is no dev)."""
    if not rt.main or cfg.dev_segments <= 0:
        return []
    from streamst.training.evaluate import pick_segments

    try:
        items, _ = prepare_split_checked(cfg, "dev", say)
    except FileNotFoundError as e:
        say(f"no dev evaluation: {e}")
        return []
    chosen = [items[i] for i in pick_segments(len(items), cfg.dev_segments)]
    return [(((f.float() - mean) / std), tgt) for f, _, tgt in chosen]


def _finish(cfg, out, net, dev, dev_history, task, tgt_tok, rt, skipped, lengths, epoch, batch_pos, seconds, mcfg,
            say) -> Path:
    """model.pt (averaged or last weights), its final dev scores and its model card."""
    from streamst.training.average import average_checkpoints, step_checkpoints
    from streamst.training.cards import CardFacts, hardware_description, write_card
    from streamst.training.evaluate import evaluate_dev

    final = out / "model.pt"
    steps_files = step_checkpoints(out)
    averaged: list[str] = []
    if cfg.average_last > 1 and len(steps_files) > 1:
        chosen = steps_files[-cfg.average_last:]
        average_checkpoints(chosen, final)
        averaged = [p.name for p in chosen]
        say(f"averaged {', '.join(averaged)} into {final}")
    else:
        average_checkpoints(steps_files[-1:], final)
    final_dev: dict = {}
    if dev:
        obj = read_checkpoint(final)
        eval_net = SpeechTranslator(mcfg)
        eval_net.load_state_dict({k: v.float() for k, v in obj["state_dict"].items()})
        eval_net.to(rt.device)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if rt.device.type == "cuda" else contextlib.nullcontext()
        with ctx:
            final_dev, hyps = evaluate_dev(eval_net, dev, tgt_tok, task, device=rt.device,
                                           ctc=cfg.ctc_weight >= 1.0 and task == "asr")
        (out / "dev-hyps.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
        say("final model on dev: " + ", ".join(f"{k} {v:.2f}" for k, v in final_dev.items()))
    n_batches = len(bucket_batches(lengths, cfg.max_frames, random.Random(0)))
    facts = CardFacts(
        name=cfg.name or out.name, task=task, pair=cfg.pair, corpus=str(cfg.corpus), train_segments=len(lengths),
        train_hours=sum(lengths) / 100 / 3600, skipped_entries=skipped, config=mcfg.to_dict(),
        parameters=sum(p.numel() for p in net.parameters()), steps=int(read_checkpoint(final)["meta"].get("steps", 0)),
        epochs=epoch + batch_pos / max(1, n_batches), train_seconds=seconds,
        hardware=hardware_description(rt.device, rt.world),
        precision="bf16 autocast" if rt.device.type == "cuda" else "fp32", batch_frames=cfg.max_frames,
        accum=cfg.accum, averaged=averaged, init_encoder=cfg.init_encoder, init_model=cfg.init_model,
        dev_history=dev_history,
        final_dev=final_dev, dev_segments=len(dev), command=cfg.command,
    )
    card = write_card(out / "model.md", facts, final)
    say(f"wrote {final} and {card}")
    return final
