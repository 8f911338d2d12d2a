"""`OnnxSpeechModel`: the exported model run by onnxruntime behind the same `SpeechModel` interface as the torch
backend. Features stay in torch (Kaldi fbank); encoder, memory projection and decoder steps run in onnxruntime;
greedy/beam search is the shared `streamst.decoding.decode`, so cross-attention reaches the policies unchanged.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from streamst.decoding import StopRule, decode
from streamst.features import FeatureState, init_feature_state, normalize, stream_features
from streamst.model import ModelConfig, ready_frames
from streamst.speech_model import Hypothesis
from streamst.tokenizer import Tokenizer, words_from_pieces


@dataclass
class OnnxStreamState:
    """One stream's state; every array has a fixed size except `pending` (under one chunk of features)."""

    features: FeatureState
    pending: np.ndarray  # [n, mels] normalised feature frames not yet encoded
    sub1: np.ndarray  # [1, 1, 2, mels]
    sub2: np.ndarray  # [1, C, 2, f1]
    kv: np.ndarray  # [layers, 1, 2, left, d]
    conv: np.ndarray  # [layers, 1, d, kernel - 1]
    frames: int = 0  # encoder frames produced so far


def make_session(path: Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class _Stacked(list):
    """A list of per-layer (k, v) torch pairs that also keeps the stacked numpy arrays the graph wants."""

    stacked: tuple[np.ndarray, np.ndarray]


def _stack(pairs) -> tuple[np.ndarray, np.ndarray]:
    stacked = getattr(pairs, "stacked", None)
    if stacked is not None:
        return stacked
    return (np.ascontiguousarray(np.stack([k.numpy() for k, _ in pairs])),
            np.ascontiguousarray(np.stack([v.numpy() for _, v in pairs])))


def _unstack(k: np.ndarray, v: np.ndarray) -> _Stacked:
    out = _Stacked((torch.from_numpy(k[i]), torch.from_numpy(v[i])) for i in range(k.shape[0]))
    out.stacked = (k, v)
    return out


class OnnxDecoder:
    """Duck-types `streamst.model.Decoder` for `streamst.decoding.decode`: project_memory and one step."""

    def __init__(self, memory_session, decoder_session, cfg: ModelConfig):
        self.memory_session, self.decoder_session, self.cfg = memory_session, decoder_session, cfg
        self.heads, self.dk = cfg.n_heads, cfg.d_model // cfg.n_heads

    def project_memory(self, memory: Tensor) -> _Stacked:
        mk, mv = self.memory_session.run(None, {"memory": np.ascontiguousarray(memory.float().numpy())})
        return _unstack(mk, mv)

    def __call__(self, tokens: Tensor, mem_kv, mem_mask=None, caches=None, pad_mask=None):
        b, t = tokens.shape
        mk, mv = _stack(mem_kv)
        if caches:
            sk, sv = _stack(caches)
        else:
            sk = sv = np.zeros((self.cfg.dec_layers, b, self.heads, 0, self.dk), np.float32)
        start = sk.shape[3]
        pos = np.minimum(np.arange(start, start + t), self.cfg.max_target_len - 1)
        feeds = {
            "tokens": tokens.numpy().astype(np.int64), "pos": np.broadcast_to(pos, (b, t)).astype(np.int64),
            "self_k": sk, "self_v": sv, "self_mask": np.ones((b, start + t), bool),
            "mem_k": mk, "mem_v": mv, "mem_mask": np.ones((b, mk.shape[3]), bool),
        }
        logp, nk, nv, attn = self.decoder_session.run(None, feeds)
        return torch.from_numpy(logp)[:, None, :], _unstack(nk, nv), torch.from_numpy(attn)


class OnnxSpeechModel:
    """Features -> onnxruntime encoder step -> onnxruntime decoder, one stream state at a time."""

    appends_memory = True
    batches = False  # one stream per onnxruntime call
    frame_ms = 40.0

    def __init__(self, folder: str | Path, threads: int = 0):
        folder = Path(folder)
        meta_path = folder / "model.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"not an exported ONNX model folder (no model.json): {folder}")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != "streamst-onnx":
            raise ValueError(f"{meta_path}: not a streamst ONNX export")
        self.folder, self.info = folder, meta
        self.cfg = ModelConfig.from_dict(meta["config"])
        self.task, self.src_lang, self.tgt_lang = meta["task"], meta["src_lang"], meta["tgt_lang"]
        self.name, self.meta, self.int8 = meta.get("name", folder.name), meta.get("meta", {}), meta.get("int8", False)
        self.src_tokenizer = Tokenizer((folder / "src_tokenizer.model").read_bytes())
        self.tokenizer = Tokenizer((folder / "tgt_tokenizer.model").read_bytes())
        w = np.load(folder / "weights.npz")
        self.mean, self.std = torch.from_numpy(w["cmvn_mean"]), torch.from_numpy(w["cmvn_std"])
        self.ctc_weight, self.ctc_bias = w["ctc_weight"], w["ctc_bias"]
        self.encoder_session = make_session(folder / "encoder.onnx", threads)
        self.decoder = OnnxDecoder(make_session(folder / "memory.onnx", threads),
                                   make_session(folder / "decoder.onnx", threads), self.cfg)
        self.chunk_frames, self.left_frames = self.cfg.chunk_frames, self.cfg.left_frames
        self.max_target_tokens = self.cfg.max_target_len  # the decoder's position table: prefix + continuation
        sub_f1 = (self.cfg.n_mels - 3) // 2 + 1
        self._sub2_shape = (1, self.cfg.sub_channels, 2, sub_f1)

    def init_state(self) -> OnnxStreamState:
        c = self.cfg
        return OnnxStreamState(
            features=init_feature_state(),
            pending=np.zeros((0, c.n_mels), np.float32),
            sub1=np.zeros((1, 1, 2, c.n_mels), np.float32),
            sub2=np.zeros(self._sub2_shape, np.float32),
            kv=np.zeros((c.enc_layers, 1, 2, c.left_frames, c.d_model), np.float32),
            conv=np.zeros((c.enc_layers, 1, c.d_model, c.conv_kernel - 1), np.float32),
        )

    def features(self, audio: Tensor, state: OnnxStreamState) -> tuple[np.ndarray, FeatureState]:
        """Normalised feature frames of new audio, appended to the pending ones."""
        feats, fstate = stream_features(audio, state.features)
        feats = normalize(feats, self.mean, self.std).numpy()
        return np.concatenate([state.pending, feats]) if state.pending.size else feats, fstate

    def encode(self, audio: Tensor, state: OnnxStreamState, final: bool = False) -> tuple[Tensor, OnnxStreamState]:
        pending, fstate = self.features(audio, state)
        n = ready_frames(pending.shape[0], self.chunk_frames, final)
        if n == 0:
            return torch.zeros(0, self.cfg.d_model), OnnxStreamState(fstate, pending, state.sub1, state.sub2, state.kv,
                                                                     state.conv, state.frames)
        out, sub1, sub2, kv, conv = self.encoder_session.run(None, {
            "feats": np.ascontiguousarray(pending[None, : 4 * n]), "sub1": state.sub1, "sub2": state.sub2,
            "kv": state.kv, "conv": state.conv, "frames": np.array([state.frames], np.int64)})
        rest = pending[4 * n:] if not final else pending[:0]
        return torch.from_numpy(out[0]), OnnxStreamState(fstate, rest, sub1, sub2, kv, conv, state.frames + n)

    def drop_frames(self, state: OnnxStreamState, n: int, tokens: int = 0) -> OnnxStreamState:
        return state  # the encoder's caches are already bounded; the session trims its memory

    def decode(self, memory: Tensor, prefix: list[int], state: OnnxStreamState, *, beam: int = 1,
               max_tokens: int = 64, stop: StopRule | None = None) -> tuple[Hypothesis, OnnxStreamState]:
        tok = self.tokenizer
        hyp = decode(self.decoder, memory, prefix, tok.bos, tok.eos, beam=beam, max_tokens=max_tokens,
                     stop=stop, word_start_ids=tok.word_start_ids)
        return hyp, state

    def samples_cut(self, state: OnnxStreamState) -> int:
        return 0

    def restart_unwritten(self, state: OnnxStreamState) -> None:
        return None  # no restart after the final pass

    def needs_commit(self, state: OnnxStreamState) -> bool:
        return False  # the memory has no end: StreamAtt bounds it

    def ctc_tokens(self, memory: Tensor) -> list[int]:
        """Greedy CTC: best piece per frame, repeats merged, blanks removed."""
        if memory.shape[0] == 0:
            return []
        best = (memory.numpy() @ self.ctc_weight.T + self.ctc_bias).argmax(-1).tolist()
        blank = self.cfg.src_vocab
        out, prev = [], None
        for t in best:
            if t != prev and t != blank:
                out.append(t)
            prev = t
        return out

    def ctc_words(self, memory: Tensor) -> int | None:
        return len(words_from_pieces(self.src_tokenizer.pieces(self.ctc_tokens(memory))))


def load_onnx_model(folder: str | Path, threads: int = 0) -> OnnxSpeechModel:
    """Load a folder written by `streamst export-onnx`."""
    return OnnxSpeechModel(folder, threads)
