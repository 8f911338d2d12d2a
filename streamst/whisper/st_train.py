"""Train a translation decoder over the frozen causal Whisper encoder, from cached encoder frames.

The seed paper's claim: a decoder trained offline on whole utterances serves the simultaneous task under a
policy. So each example is one whole utterance's frames (`streamst.whisper.st_cache`) and its translation; the
decoder starts from Whisper tiny.en's and learns to write German or Spanish after the same start tokens. A third
of the examples carry another translation as Whisper's prompt (<|startofprev|>), as a long stream does after a
restart. The softmax runs over the target vocabulary only (the tokens the training targets use), which is also
what the model may write. Resumable; dev BLEU picks the model; real speech (LibriVox) chrF is logged beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from streamst.whisper.st_cache import check_cache_encoder, corrected_targets, encoder_of, fingerprint, load_cache
from streamst.whisper.translation import EMBEDDING, CausalWhisperTranslator, save_st_checkpoint

PROMPT_SHARE = 1 / 3
MAX_TARGET_TOKENS = 160
REAL_SPEECH = Path("/usr/share/pocketsphinx/test/data/librivox")


def real_references(lang: str) -> dict[str, str]:
    """LibriVox clip name -> its reference translation (the shared realspeech table), where present."""
    import csv

    table = Path(__file__).resolve().parents[3] / "shared" / "realspeech" / "librivox_translations.tsv"
    if not table.is_file():
        return {}
    with table.open(newline="") as f:
        return {row["file"]: row[lang] for row in csv.DictReader(f, delimiter="\t")}


class DecoderTrainer:
    """The decoder being trained, its optimiser and the data it reads."""

    def __init__(self, caches: list[Path], lang: str, *, lr: float, batch_frames: int, seed: int,
                 adapter: Path | None = None):
        self.net, self.loaded, checkpoint = encoder_of(adapter)
        self.encoder_factors = checkpoint["factors"]
        self.block = int(checkpoint.get("block", 16))
        self.tok = self.loaded.tokenizer
        self.lang, self.lr, self.batch_frames = lang, lr, batch_frames
        self.rng = random.Random(seed)
        ours = fingerprint(self.encoder_factors)
        self.train, self.dev = [], []
        for cache in caches:
            name = adapter or "the shipped whisper-tiny.en-causal"
            recorded = check_cache_encoder(cache, ours, f"pass the one that made it as --adapter (not {name})")
            if not recorded:
                print(f"{cache}: no encoder.json (made before it was recorded): trusting that its frames are this "
                      f"encoder's", flush=True)
            # caches made before the Bible reader was fixed carry its misaligned verses: those are corrected
            correct = None if recorded else corrected_targets(lang)
            self.train += [(f, self._tokens(t)) for f, _, t in load_cache(cache, "train", lang, correct)]
            self.dev += load_cache(cache, "dev", lang, correct)
        if not self.train:
            raise SystemExit(f"{', '.join(map(str, caches))} hold no training example with a {lang} translation")
        # dev BLEU picks the model on sentences: a phrase pair is a dictionary entry, not something said
        self.dev = [d for d in self.dev if d[1].rstrip()[-1:] in ".?!"] or self.dev
        self.sot = self.tok.sot_sequence(None, "transcribe")
        used = {t for _, toks in self.train for t in toks} | {self.tok.eot, self.tok.sot_prev, *self.sot}
        self.vocab = torch.tensor(sorted(used))
        self.index = torch.full((self.loaded.config.n_vocab,), -100, dtype=torch.long)
        self.index[self.vocab] = torch.arange(len(self.vocab))
        # the full embedding stays as it is; the decoder reads and writes through a copy of the vocabulary's rows
        # (its tokens are renumbered by `index`), so each update touches 5-8k rows, not 52k
        self.full_embedding = self.net.decoder.token_embedding.weight.detach().clone()
        self.net.decoder.token_embedding = torch.nn.Embedding.from_pretrained(self.full_embedding[self.vocab],
                                                                              freeze=False)
        # the cross-attention keys and values stay the ASR decoder's: they read the frozen encoder already, and
        # frozen they need no backward pass over every memory frame (half the cost of an update)
        self.net.requires_grad_(False)
        for name, p in self.net.decoder.named_parameters():
            p.requires_grad_(not name.endswith(("cross_attn.key.weight", "cross_attn.value.weight",
                                                "cross_attn.value.bias")))
        self.params = [p for p in self.net.decoder.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.step = 0

    def _tokens(self, text: str) -> list[int]:
        return self.tok.encode(" " + text.strip())[:MAX_TARGET_TOKENS]

    def batches(self) -> list[list[int]]:
        """Indices of the training examples in batches of similar length, in random order (one epoch)."""
        order = sorted(range(len(self.train)), key=lambda i: (self.train[i][0].shape[0], self.rng.random()))
        out, current = [], []
        for i in order:
            longest = max([self.train[j][0].shape[0] for j in current] + [self.train[i][0].shape[0]])
            if current and longest * (len(current) + 1) > self.batch_frames:
                out.append(current)
                current = []
            current.append(i)
        out.append(current)
        self.rng.shuffle(out)
        return out

    def loss(self, batch: list[int]) -> torch.Tensor:
        frames = [self.train[i][0] for i in batch]
        t = max(f.shape[0] for f in frames)
        memory = torch.stack([F.pad(f.float(), (0, 0, 0, t - f.shape[0])) for f in frames])
        blocked = torch.stack([torch.arange(t) >= f.shape[0] for f in frames])[:, None, None, :]
        rows, labels = [], []
        for i in batch:
            toks = self.train[i][1]
            prompt: list[int] = []
            if self.rng.random() < PROMPT_SHARE:
                other = self.train[self.rng.randrange(len(self.train))][1]
                prompt = [self.tok.sot_prev] + other[-self.rng.randint(4, 48):]
            seq = prompt + self.sot + toks + [self.tok.eot]
            first_label = len(prompt) + len(self.sot) - 1
            rows.append(seq[:-1])
            labels.append([-100] * first_label + seq[first_label + 1:])
        n = max(len(r) for r in rows)
        inputs = self.index[torch.tensor([r + [self.tok.eot] * (n - len(r)) for r in rows])]
        target = torch.tensor([lab + [-100] * (n - len(lab)) for lab in labels])
        target = torch.where(target >= 0, self.index[target.clamp_min(0)], target)
        cache = self.net.decoder.start(memory)
        hidden = self.net.decoder.hidden(inputs, cache, blocked)
        logits = hidden @ self.net.decoder.token_embedding.weight.T
        return F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, label_smoothing=0.1)

    def weights(self) -> dict[str, torch.Tensor]:
        """The whole model's weights as tiny.en names them, the trained rows back in the full embedding."""
        weights = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        embedding = self.full_embedding.clone()
        embedding[self.vocab] = weights[EMBEDDING]
        weights[EMBEDDING] = embedding
        return weights

    def model(self) -> CausalWhisperTranslator:
        """The decoder as the runtime streams it (a copy of the weights, on the CPU)."""
        weights = self.weights()
        return CausalWhisperTranslator(replace(self.loaded, state_dict=weights), vocab=self.vocab,
                                       tgt_lang=self.lang, block=self.block)

    def evaluate(self, n_dev: int = 200) -> dict:
        """Dev BLEU (offline, the dev utterances' cached frames) and chrF on the real LibriVox clips."""
        import sacrebleu

        from streamst.whisper.finetune import transcribe_stream
        from streamst.whisper.speech_pool import real_clips

        model = self.model()
        hyps, refs = [], []
        for frames, _, target in self.dev[:n_dev]:
            memory = frames.float()
            state = replace(model.init_state(), encoded=memory)
            hyp, _ = model.decode(memory, [], state, max_tokens=MAX_TARGET_TOKENS)
            hyps.append(self.tok.decode(hyp.tokens).strip())
            refs.append(target)
        out = {"dev_bleu": sacrebleu.corpus_bleu(hyps, [refs]).score, "dev": hyps[:3]}
        references = real_references(self.lang)
        clips = [c for c in real_clips(REAL_SPEECH) if c[0] in references] if REAL_SPEECH.is_dir() else []
        if clips:
            real = [transcribe_stream(model, audio, "offline") for _, audio, _ in clips]
            out["real_chrf"] = sacrebleu.corpus_chrf(real, [[references[name] for name, _, _ in clips]]).score
            out["real"] = real
        return out

    def init_from(self, path: Path) -> None:
        """Start from a shipped translation model's decoder (a new run continuing an earlier one whose run folder
        is gone); vocabulary rows it never trained keep tiny.en's embedding."""
        from streamst.checkpoint import read_checkpoint
        from streamst.whisper.translation import merged_weights

        obj = read_checkpoint(path)
        if obj.get("kind") != "whisper-causal-st" or obj.get("tgt_lang") != self.lang:
            raise SystemExit(f"{path}: not a whisper-causal-st model into {self.lang}")
        weights = {k: v.float() for k, v in merged_weights(obj).state_dict.items() if k.startswith("decoder.")}
        embedding = weights.pop(EMBEDDING)
        weights[EMBEDDING] = embedding[self.vocab]
        self.net.decoder.load_state_dict({k[len("decoder."):]: v for k, v in weights.items()})

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        torch.save({"decoder": self.net.decoder.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "vocab": self.vocab}, tmp)
        os.replace(tmp, path)

    def load(self, path: Path) -> None:
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not torch.equal(obj["vocab"], self.vocab):
            raise SystemExit(f"{path}: trained on another vocabulary (other cached data)")
        self.net.decoder.load_state_dict(obj["decoder"])
        self.opt.load_state_dict(obj["opt"])
        self.step = obj["step"]

    def ship(self, path: Path, meta: dict) -> None:
        save_st_checkpoint(path, encoder_factors=self.encoder_factors, state_dict=self.weights(),
                           vocab=self.vocab, tgt_lang=self.lang, block=self.block, meta=meta)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, nargs="+", required=True,
                    help="folders written by streamst.whisper.st_cache (by the same encoder)")
    ap.add_argument("--adapter", type=Path, help="the causal Whisper checkpoint whose encoder made the cache "
                                                 "(default: the shipped whisper-tiny.en-causal)")
    ap.add_argument("--lang", required=True, choices=["de", "es"])
    ap.add_argument("--out", type=Path, required=True, help="run folder (a run already there is resumed)")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--steps", type=int, help="stop after this many updates in all")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-frames", type=int, default=6000, help="encoder frames per update (20 ms each)")
    ap.add_argument("--eval-every", type=float, default=15.0, help="minutes between evaluations (0: at the end only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--init", type=Path, help="a new run starts from this translation model's decoder")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = DecoderTrainer(args.cache, args.lang, lr=args.lr, batch_frames=args.batch_frames, seed=args.seed,
                             adapter=args.adapter)
    resumed = (args.out / "last.pt").exists()
    if resumed:
        trainer.load(args.out / "last.pt")
    elif args.init:
        trainer.init_from(args.init)
    log = (args.out / "log.jsonl").open("a")
    best_path = args.out / "best.json"
    best = json.loads(best_path.read_text())["dev_bleu"] if best_path.exists() else -1.0

    def record(entry: dict) -> None:
        entry.update(step=trainer.step, time=time.strftime("%H:%M:%S"))
        log.write(json.dumps(entry, ensure_ascii=False) + "\n")
        log.flush()

    record({"start": True, "train": len(trainer.train), "dev": len(trainer.dev), "vocab": len(trainer.vocab)})
    start = last_eval = time.time()
    total = args.minutes * 60

    def evaluate() -> None:
        nonlocal best
        trainer.save(args.out / "last.pt")
        result = trainer.evaluate()
        record({"eval": True, **result})
        if result["dev_bleu"] > best:
            best = result["dev_bleu"]
            trainer.ship(args.out / "model.pt", {"step": trainer.step, **{k: v for k, v in result.items()
                                                                          if k in ("dev_bleu", "real_chrf")}})
            best_path.write_text(json.dumps({"dev_bleu": best, "step": trainer.step}))

    if args.init and not resumed:  # the model started from is the one to beat: scored before any update
        evaluate()
    done = False
    losses: list[float] = []
    while not done:
        for batch in trainer.batches():
            elapsed = time.time() - start
            if elapsed >= total or (args.steps is not None and trainer.step >= args.steps):
                done = True
                break
            for g in trainer.opt.param_groups:
                g["lr"] = args.lr * min(1.0, (trainer.step + 1) / 100) * max(0.1, 1 - elapsed / total)
            loss = trainer.loss(batch)
            trainer.opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainer.params, 1.0)
            trainer.opt.step()
            trainer.step += 1
            losses.append(loss.item())
            if trainer.step % 25 == 0:
                record({"loss": sum(losses) / len(losses), "batch": len(batch)})
                losses = []
            if args.eval_every and time.time() - last_eval >= args.eval_every * 60:
                evaluate()
                last_eval = time.time()
    evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
