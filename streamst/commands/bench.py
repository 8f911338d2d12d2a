"""`streamst bench`: speed and memory of the streaming model on this machine.

Measures, in one run: per-chunk encoder and decoder time (p50/p95) at 10 s, 60 s and 600 s into a stream for
torch eager and onnxruntime; a naive baseline that re-encodes all audio so far at every chunk; the
single-stream real-time factor; how many real-time streams the server's batched step carries (real Sessions with
the server's policy and stop rules through `step_sessions`, p95 added delay under 300 ms on a virtual clock with
the real batched compute: `streamst.batching.realtime`); peak RSS; and what int8 costs:
the int8 export's speed and its committed words against fp32 onnx and torch on real speech (the shipped sample,
or --quality-data).
With --device (cpu or cuda) it measures the device scheduler instead (streamst.batching.device): every stream's
state on the device, batched features, encoder and decoder steps in --dtype, AlignAtt, CUDA graphs on a GPU.
The per-chunk timings and the device scheduler work on a bounded context (the last 10 s of encoder frames, the
last 16 prefix tokens) and write up to 4 greedy tokens per 320 ms chunk, so their cost is the same at 10 s and
at 600 s by design.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time

import numpy as np
import torch

from streamst.bench_causal import bench_causal_whisper

CHUNK_SAMPLES = 5120  # 320 ms at 16 kHz
CHUNK_S = CHUNK_SAMPLES / 16000
MEMORY_FRAMES = 250  # 10 s of 40 ms frames, what StreamAtt-style trimming keeps
PREFIX_TOKENS = 16
NEW_TOKENS = 4
BOUND_MS = 300.0
CAUSAL_WHISPER = "whisper-tiny.en-causal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--model", help="model name or checkpoint (default: the first available model, "
                                        "else the default config at random init)")
    parser.add_argument("--random-model", metavar="KEY=VALUE,...",
                        help="bench a model at random init with these ModelConfig fields instead of a trained one, "
                             "e.g. enc_layers=12,d_model=256 (speed depends on the shapes, not the weights)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="onnx",
                        help="backend for rtf, chunk times and the scheduler (both are always timed for the ratio)")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (for tests); 600 s is still reached")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per backend (default 1: per-chunk work is small, and a second thread only adds tail latency on a busy 2-core machine; 0: library default)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 export (its speed and word agreement)")
    parser.add_argument("--quality-data", metavar="MUSTC_ROOT",
                        help="compare torch, fp32 and int8 onnx on this MuST-C-layout corpus (default: the shipped "
                             "sample-en.wav)")
    parser.add_argument("--quality-pair", default="en-de")
    parser.add_argument("--quality-split", default="tst-COMMON")
    parser.add_argument("--quality-limit", type=int, default=20, help="segments of --quality-data (default 20)")
    parser.add_argument("--quality-policy", default="waitk:k=2", help="policy for the committed words")
    parser.add_argument("--device", help="bench the device scheduler on cpu or cuda instead of torch vs onnxruntime: "
                                         "features, encoder, decoder and AlignAtt for all streams in one batch")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                        help="dtype of the step graphs with --device (default: bfloat16 on cuda, float32 on cpu)")
    parser.add_argument("--policy", default="streamatt:frames=4,history_words=20",
                        help="policy of the streams in the stream-count search (default: the server's)")
    parser.add_argument("--audio", help="16 kHz speech the searched streams send, looped (default: the shipped "
                                        "sample)")
    parser.add_argument("--max-batch", type=int, default=32, help="streams per batched step, as `serve --max-batch`")
    parser.add_argument("--max-streams", type=int,
                        help="cap of the real-time streams search (default 1024, or 65536 with --device cuda)")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="with --device cuda: run the encoder eagerly")
    parser.add_argument("--whisper-minutes", type=float, default=10.0,
                        help="length of the real-speech stream the causal Whisper is timed on (default 10; 0: skip "
                             "it); with --model whisper-tiny.en-causal only that is measured")


def synthetic_chunk(i: int) -> torch.Tensor:
    """Seeded speech-like noise (a few harmonics plus noise), 320 ms."""
    rng = np.random.default_rng(i)
    t = (np.arange(CHUNK_SAMPLES) + i * CHUNK_SAMPLES) / 16000
    f0 = 120 + 40 * np.sin(i / 7)
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * 0.05 + rng.standard_normal(CHUNK_SAMPLES) * 0.01
    return torch.from_numpy(x.astype(np.float32))


def default_model():
    """The first available streamst model (Whisper conversions are skipped), else the default ModelConfig at
    random init (for speed figures only)."""
    from streamst.checkpoint import available_models, model_from_checkpoint, read_checkpoint
    from streamst.streaming_model import StreamingSpeechModel

    for name, path in available_models().items():
        try:
            obj = read_checkpoint(path)
        except (ValueError, OSError):
            continue
        if obj.get("kind", "streamst") == "streamst":
            model = model_from_checkpoint(obj, name=name)
            if isinstance(model, StreamingSpeechModel):
                return model, f"{name} ({path})"
    return random_model(), "default ModelConfig at random init (no trained model available; figures are about speed)"


def parse_config(spec: str) -> dict:
    """'enc_layers=12,d_model=256' -> {'enc_layers': 12, 'd_model': 256}, checked against ModelConfig's int fields."""
    from streamst.model import ModelConfig

    fields = {name: f.type for name, f in ModelConfig.__dataclass_fields__.items()}
    out = {}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in fields or fields[key] not in (int, "int"):
            raise ValueError(f"--random-model: {item!r} is not KEY=VALUE with KEY one of the integer ModelConfig "
                             f"fields ({', '.join(k for k, t in fields.items() if t in (int, 'int'))})")
        try:
            out[key] = int(value)
        except ValueError:
            raise ValueError(f"--random-model: {key} needs an integer, not {value!r}") from None
    return out


def random_model(**overrides: int):
    """A model of ModelConfig (with overrides) at random init and a toy tokenizer: for speed figures only."""
    from streamst.model import ModelConfig, SpeechTranslator
    from streamst.streaming_model import StreamingSpeechModel
    from streamst.tokenizer import Tokenizer

    torch.manual_seed(0)
    cfg = ModelConfig(**{**overrides, "dropout": 0.0})
    words = [f"w{i} x{i % 17} y{i % 31}" for i in range(400)]
    tok = Tokenizer.train(words, vocab_size=cfg.tgt_vocab)
    return StreamingSpeechModel(SpeechTranslator(cfg), tok, tok, torch.zeros(cfg.n_mels), torch.ones(cfg.n_mels),
                                task="st", src_lang="en", tgt_lang="de", name="random-init")


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q)) if len(values) else float("nan")


def stream_timings(model, positions_s: list[float], window: int) -> dict:
    """One stream run chunk by chunk to the last position, its state kept at each position; then `window` rounds
    that time, for every position in turn (rotating the order), the encoder on the next chunk and the bounded
    decoder, each position advancing its own copy of the state. Interleaving the positions puts the machine's
    drift into all of them alike, so their ratio is the stream's own. Returns {pos: {"enc", "dec", "tokens"}} in s."""
    starts = {int(p / CHUNK_S): p for p in positions_s}
    state = model.init_state()
    memory = torch.zeros(0, model.net.cfg.d_model if hasattr(model, "net") else model.cfg.d_model)
    rng = np.random.default_rng(0)
    vocab = len(model.tokenizer)
    prefix = [int(t) for t in rng.integers(4, vocab, PREFIX_TOKENS)]
    audio = [synthetic_chunk(i) for i in range(64)]
    kept = {}
    for i in range(max(starts) + 1):
        if i in starts:
            kept[starts[i]] = [copy.deepcopy(state), memory.clone(), i]
        frames, state = model.encode(audio[i % 64], state)
        memory = torch.cat([memory, frames])[-MEMORY_FRAMES:]
    out = {p: {"enc": [], "dec": [], "tokens": []} for p in positions_s}
    order = list(positions_s)
    for r in range(window):
        for p in order[r % len(order):] + order[:r % len(order)]:
            st, mem, i = kept[p]
            t0 = time.perf_counter()
            frames, st = model.encode(audio[i % 64], st)
            t1 = time.perf_counter()
            mem = torch.cat([mem, frames])[-MEMORY_FRAMES:]
            t2 = time.perf_counter()
            hyp, st = model.decode(mem, prefix, st, max_tokens=NEW_TOKENS)
            t3 = time.perf_counter()
            kept[p] = [st, mem, i + 1]
            out[p]["enc"].append(t1 - t0)
            out[p]["dec"].append(t3 - t2)
            out[p]["tokens"].append(len(hyp.tokens))
    return out


def recompute_timings(model, positions_s: list[float], reps: int) -> dict:
    """The naive baseline: features and encoder over all audio so far, at each position (torch eager)."""
    from streamst.features import normalize, utterance_features

    net = model.net
    cfg = net.cfg
    out = {}
    for p in positions_s:
        n = int(p / CHUNK_S)
        audio = torch.cat([synthetic_chunk(i % 64) for i in range(n)])
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            with torch.inference_mode():
                feats = normalize(utterance_features(audio), model.mean, model.std).unsqueeze(0)
                net.encoder(feats, torch.tensor([feats.shape[1]]), cfg.chunk_frames, cfg.left_frames)
            times.append(time.perf_counter() - t0)
        out[p] = times
    return out


def session_rtf(model, seconds: float) -> float:
    """The real Session loop (wait-k) on synthetic audio: compute over audio duration."""
    from streamst.policies import parse_policy
    from streamst.session import Session

    s = Session(model, parse_policy("waitk:k=2"), max_new_tokens=NEW_TOKENS * 4)
    for i in range(int(seconds / CHUNK_S)):
        s.push(synthetic_chunk(i).numpy())
    s.finish()
    return s.stats()["rtf"]


def run(args: argparse.Namespace) -> int:
    from streamst.checkpoint import load_model
    from streamst.onnx_backend import load_onnx_model
    from streamst.onnx_export import export_onnx

    t_start = time.perf_counter()
    if args.dtype and not args.device:
        raise ValueError("--dtype applies to the device scheduler: give --device cpu or --device cuda")
    if args.device:
        from streamst.batching.device import resolve_device

        resolve_device(args.device, args.dtype or "float32")  # fail before loading anything
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model and args.random_model:
        raise ValueError("give --model or --random-model, not both")
    if not args.device:
        from streamst.commands.export_onnx import require_onnx_export

        require_onnx_export("bench")  # torch eager vs onnxruntime: the export needs the `onnx` extra
    if args.random_model:
        overrides = parse_config(args.random_model)
        torch_model, source = random_model(**overrides), f"random init, ModelConfig({args.random_model})"
    elif args.model:
        torch_model, source = load_model(args.model), args.model
    else:
        torch_model, source = default_model()
    from streamst.streaming_model import StreamingSpeechModel
    from streamst.whisper.causal_streaming import CausalWhisperModel

    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (lambda *a: print(*a, flush=True))
    if isinstance(torch_model, CausalWhisperModel):
        res = {"model": source, "threads": torch.get_num_threads(),
               "causal_whisper": bench_causal_whisper(torch_model, args.whisper_minutes or 1.0, log)}
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        if args.json:
            print(json.dumps(res))
        return 0
    if not isinstance(torch_model, StreamingSpeechModel):
        raise ValueError("bench measures streamst's own streaming model (not converted Whisper checkpoints)")
    cfg = torch_model.net.cfg
    log(f"model: {source}; {sum(p.numel() for p in torch_model.net.parameters()) / 1e6:.1f}M parameters, "
        f"{cfg.enc_layers}-layer d={cfg.d_model} encoder, {cfg.dec_layers}-layer decoder, chunk 320 ms")
    if args.device:
        res = run_device(args, torch_model, source, log)
        res["bench_s"] = time.perf_counter() - t_start
        log(f"bench took {res['bench_s']:.0f} s")
        if args.json:
            print(json.dumps(res))
        return 0
    tmp = tempfile.TemporaryDirectory(prefix="streamst-bench-")
    onnx_model = load_onnx_model(export_onnx(torch_model, tmp.name), threads=args.threads)
    models = {"torch": torch_model, "onnx": onnx_model}
    positions = [10.0, 60.0, 600.0]
    window = 10 if args.quick else 30
    res: dict = {"model": source, "backend": args.backend, "threads": torch.get_num_threads()}
    timings = {}
    for name, model in models.items():
        timings[name] = stream_timings(model, positions, window)
        for p in positions:
            r = timings[name][p]
            log(f"{name:5s} at {p:5.0f} s: encoder p50 {pct(r['enc'], 50):6.2f} p95 {pct(r['enc'], 95):6.2f} ms | "
                f"decoder ({np.mean(r['tokens']):.1f} tokens) p50 {pct(r['dec'], 50):6.2f} p95 {pct(r['dec'], 95):6.2f} ms")
    if not args.no_int8:
        int8_dir = tempfile.TemporaryDirectory(prefix="streamst-bench-int8-")
        int8_model = load_onnx_model(export_onnx(torch_model, int8_dir.name, int8=True), threads=args.threads)
        timings["int8"] = stream_timings(int8_model, positions, window)
        for p in positions:
            r = timings["int8"][p]
            log(f"int8  at {p:5.0f} s: encoder p50 {pct(r['enc'], 50):6.2f} p95 {pct(r['enc'], 95):6.2f} ms | "
                f"decoder ({np.mean(r['tokens']):.1f} tokens) p50 {pct(r['dec'], 50):6.2f} p95 {pct(r['dec'], 95):6.2f} ms")
    rec = recompute_timings(torch_model, positions[:2], 2 if args.quick else 4)
    for p in positions[:2]:
        cached = np.median(timings["torch"][p]["enc"])
        log(f"naive re-encode (torch) at {p:4.0f} s: p50 {pct(rec[p], 50):8.1f} p95 {pct(rec[p], 95):8.1f} ms "
            f"= {np.median(rec[p]) / cached:6.1f}x the cached encoder")
    main_t = timings[args.backend]
    chunk = {p: np.array(main_t[p]["enc"]) + np.array(main_t[p]["dec"]) for p in positions}
    both = {n: np.median(np.concatenate([np.array(timings[n][p]["enc"]) + np.array(timings[n][p]["dec"])
                                         for p in positions])) for n in models}
    res.update({
        "rtf": float(np.mean(np.concatenate(list(chunk.values()))) / CHUNK_S),
        "chunk_ms_p50_10s": pct(chunk[10.0], 50), "chunk_ms_p95_10s": pct(chunk[10.0], 95),
        "chunk_ms_p50_60s": pct(chunk[60.0], 50), "chunk_ms_p95_60s": pct(chunk[60.0], 95),
        "chunk_ms_p50_600s": pct(chunk[600.0], 50), "chunk_ms_p95_600s": pct(chunk[600.0], 95),
        "encoder_ms": {f"{n}_{p:.0f}s": [pct(timings[n][p]["enc"], 50), pct(timings[n][p]["enc"], 95)]
                       for n in models for p in positions},
        "decoder_ms": {f"{n}_{p:.0f}s": [pct(timings[n][p]["dec"], 50), pct(timings[n][p]["dec"], 95)]
                       for n in models for p in positions},
        "recompute_ms": {f"{p:.0f}s": [pct(rec[p], 50), pct(rec[p], 95)] for p in positions[:2]},
        "recompute_over_cached_10s": float(np.median(rec[10.0]) / np.median(timings["torch"][10.0]["enc"])),
        "recompute_over_cached_60s": float(np.median(rec[60.0]) / np.median(timings["torch"][60.0]["enc"])),
        "onnx_over_torch_speedup": float(both["torch"] / both["onnx"]),
    })
    log(f"{args.backend} single stream: RTF {res['rtf']:.4f}; chunk p95 {res['chunk_ms_p95_10s']:.2f} ms at 10 s, "
        f"{res['chunk_ms_p95_600s']:.2f} ms at 600 s; onnxruntime is {res['onnx_over_torch_speedup']:.2f}x torch eager")
    if not args.no_int8:
        int8_chunk = np.concatenate([np.array(timings["int8"][p]["enc"]) + np.array(timings["int8"][p]["dec"])
                                     for p in positions])
        res.update({
            "int8_rtf": float(np.mean(int8_chunk) / CHUNK_S),
            "int8_chunk_ms_p95_10s": pct(np.array(timings["int8"][10.0]["enc"]) + np.array(timings["int8"][10.0]["dec"]), 95),
            "int8_over_fp32_speedup": float(both["onnx"] / np.median(int8_chunk)),
            "int8_tokens_per_chunk": float(np.mean([np.mean(timings["int8"][p]["tokens"]) for p in positions])),
            "int8_ms": {f"{k}_{p:.0f}s": [pct(timings["int8"][p][k], 50), pct(timings["int8"][p][k], 95)]
                        for k in ("enc", "dec") for p in positions},
        })
        res.update(int8_quality(args, {"torch": torch_model, "onnx": onnx_model, "int8": int8_model}, log))
        int8_dir.cleanup()
    res["session_rtf"] = session_rtf(models[args.backend], 5.0 if args.quick else 20.0)
    log(f"{args.backend} Session loop (wait-k, the model's own decoding) RTF {res['session_rtf']:.4f}")
    res.update(server_streams(args, models[args.backend], log))
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if args.whisper_minutes > 0 and not args.model and not args.random_model:
        res["causal_whisper"] = causal_whisper_figures(args, log)
    res["bench_s"] = time.perf_counter() - t_start
    log(f"peak RSS {res['peak_rss_mb']:.0f} MB; bench took {res['bench_s']:.0f} s")
    tmp.cleanup()
    if args.json:
        print(json.dumps(res))
    return 0


def server_streams(args: argparse.Namespace, model, log) -> dict:
    """Real-time streams on the server's own batched step (`streamst.batching.realtime`), with --policy."""
    from streamst.batching.realtime import max_realtime_streams, measure
    from streamst.policies import parse_policy

    audio = bench_audio(args.audio)
    policy = parse_policy(args.policy)
    ticks, warm = (4, 8) if args.quick else (8, 16)
    n, tried = max_realtime_streams(lambda k: measure(model, policy, k, audio, ticks=ticks, warm_chunks=warm,
                                                      max_batch=args.max_batch),
                                    cap=args.max_streams or 1024, bound_ms=BOUND_MS)
    res = {"max_realtime_streams": n, "scheduler_policy": args.policy,
           "scheduler_p95_ms": {str(k): round(v.p95_ms, 1) for k, v in sorted(tried.items())},
           "scheduler_stream_chunk_ms": {str(k): round(v.stream_chunk_ms, 2) for k, v in sorted(tried.items())}}
    log(f"{args.backend} server batched step ({args.policy}): {n} real-time streams with p95 added delay < "
        f"{BOUND_MS:.0f} ms (p95 ms by streams: {res['scheduler_p95_ms']}; compute per stream-chunk, ms: "
        f"{res['scheduler_stream_chunk_ms']})")
    return res


def bench_audio(path: str | None) -> np.ndarray:
    """16 kHz mono float32 speech for the stream-count search: --audio, else the shipped sample."""
    from pathlib import Path

    from streamst.audio import read_audio

    if path is None:
        path = str(Path(__file__).resolve().parents[1] / "assets" / "sample-en.wav")
    audio, rate = read_audio(path)
    if rate != 16000:
        raise ValueError(f"--audio must be 16 kHz, got {rate} Hz")
    return np.ascontiguousarray(audio[:, 0], dtype=np.float32)


def causal_whisper_figures(args: argparse.Namespace, log) -> dict | None:
    """The default ASR model's figures beside the own model's, when it and the real speech are installed."""
    from streamst.checkpoint import available_models, load_model

    if CAUSAL_WHISPER not in available_models():
        return None
    try:
        minutes = min(args.whisper_minutes, 1.0) if args.quick else args.whisper_minutes
        return bench_causal_whisper(load_model(CAUSAL_WHISPER), minutes, log)
    except (FileNotFoundError, ValueError) as e:  # the base weights or the LibriVox clips are not installed
        log(f"causal Whisper not measured: {e}")
        return None


def int8_quality(args: argparse.Namespace, models: dict, log) -> dict:
    """Committed words and CTC transcripts of torch, fp32 onnx and int8 onnx on real speech, compared."""
    from streamst.bench_quality import compare_backends, mustc_utterances, sample_utterances

    if args.quality_data:
        utts = mustc_utterances(args.quality_data, args.quality_pair, args.quality_split, args.quality_limit)
        where = f"{args.quality_data} {args.quality_pair} {args.quality_split}, {len(utts)} segments"
    else:
        utts, where = sample_utterances(), "streamst/assets/sample-en.wav"
    q = compare_backends(models, utts, args.quality_policy)
    q["data"] = where
    metric = "bleu" if q["task"] == "st" else "wer"
    log(f"int8 vs fp32 on {where} ({args.quality_policy}): committed-word agreement "
        f"{q['agreement']['int8_vs_onnx']:.3f} (fp32 onnx vs torch {q['agreement']['onnx_vs_torch']:.3f}), "
        f"CTC agreement {q['ctc_agreement']['int8_vs_onnx']:.3f}; {metric} torch/onnx/int8 "
        + "/".join(f"{q[n][metric]:.1f}" for n in ("torch", "onnx", "int8"))
        + "; CTC WER " + "/".join(f"{q[n]['ctc_wer']:.1f}" for n in ("torch", "onnx", "int8")))
    return {"int8_word_agreement": q["agreement"]["int8_vs_onnx"], "int8_ctc_agreement": q["ctc_agreement"]["int8_vs_onnx"],
            "onnx_word_agreement": q["agreement"]["onnx_vs_torch"], "int8_quality": q}


def run_device(args: argparse.Namespace, torch_model, source: str, log) -> dict:
    """The device scheduler: single-stream chunk time, step time by batch size, real-time streams."""
    from streamst.batching.device import DeviceScheduler, simulate, time_batches
    from streamst.batching.realtime import Load, max_realtime_streams

    cuda = args.device.startswith("cuda")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    tok = torch_model.tokenizer
    sched = DeviceScheduler(torch_model.net, torch_model.mean, torch_model.std, bos=tok.bos, eos=tok.eos,
                            device=args.device, dtype=dtype, memory_frames=MEMORY_FRAMES, prefix_tokens=PREFIX_TOKENS,
                            new_tokens=NEW_TOKENS, cuda_graphs=cuda and not args.no_cuda_graphs)
    res: dict = {"model": source, "device": args.device, "dtype": dtype, "cuda_graphs": sched.cuda_graphs,
                 "threads": torch.get_num_threads(), "policy": "alignatt:frames=4 (vectorised)"}
    if cuda:
        res["gpu"] = torch.cuda.get_device_name(sched.device)
    reps = 5 if args.quick else 20
    one = time_batches(sched, [1], reps)[1]
    res.update({"rtf": float(np.mean(one) / CHUNK_S), "chunk_ms_p50_1stream": pct(one, 50),
                "chunk_ms_p95_1stream": pct(one, 95)})
    log(f"{args.device} {dtype} one stream: chunk p50 {res['chunk_ms_p50_1stream']:.2f} p95 "
        f"{res['chunk_ms_p95_1stream']:.2f} ms, RTF {res['rtf']:.4f} (features, encoder, 4 decoder steps, AlignAtt)")
    sizes = [1, 64, 1024, 4096, 16384] if cuda else ([1, 8, 32] if args.quick else [1, 8, 32, 128])
    steps = time_batches(sched, sizes, max(3, reps // 4))
    res["step_ms_by_batch"] = {str(n): [pct(t, 50), pct(t, 95)] for n, t in steps.items()}
    res["streams_per_step_capacity"] = {str(n): float(n * CHUNK_S / np.median(t)) for n, t in steps.items()}
    log("step time by batch (all streams at once): " + ", ".join(
        f"{n}: {pct(t, 50):.1f} ms ({n * CHUNK_S / np.median(t):.0f} streams/worker)" for n, t in steps.items()))
    cap = args.max_streams or (65536 if cuda else 1024)
    ticks = 4 if args.quick else 8
    n, tried = max_realtime_streams(lambda k: Load(simulate(sched, k, ticks), float("nan"), 0, float("nan")),
                                    cap=cap, bound_ms=BOUND_MS)
    res["max_realtime_streams"] = n
    res["scheduler_p95_ms"] = {str(k): round(v.p95_ms, 1) for k, v in sorted(tried.items())}
    log(f"{args.device} {dtype} device scheduler: {n} real-time streams with p95 added delay < {BOUND_MS:.0f} ms "
        f"(p95 ms by streams: {res['scheduler_p95_ms']})")
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    if cuda:
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated(sched.device) / 2**20
    return res
