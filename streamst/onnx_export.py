"""Export the streaming model's steps to ONNX: encoder step, memory projection and decoder step, each with its
caches as explicit inputs and outputs (dynamic batch, chunk count, memory length and prefix length).

The graphs reuse the trained modules but write attention by hand with explicit masks, so that
  - the encoder's key/value cache has a fixed size (`left` frames, padded and masked at the start of a
    stream), and each batch row carries its own position: streams of different ages share one batch;
  - several chunks go through in one call with the streaming chunk mask (same result as one call per chunk);
  - the decoder takes per-row key masks, so streams with different memories and prefixes share one batch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamst.model import SpeechTranslator

OPSET = 18
FILES = ("encoder.onnx", "memory.onnx", "decoder.onnx")


class EncoderStepGraph(nn.Module):
    """(feats [B, 4T, mels], caches, frames [B]) -> (encoder frames [B, T, d], new caches): `Encoder.step_frames`,
    the one encoder step (fixed-size caches, rows of any ages in one batch), as a module to export."""

    def __init__(self, net: SpeechTranslator, chunk: int, left: int):
        super().__init__()
        if left <= 0:
            raise ValueError("ONNX export needs a model with left_frames > 0")
        self.encoder, self.chunk, self.left = net.encoder, chunk, left

    def forward(self, feats: Tensor, sub1: Tensor, sub2: Tensor, kv: Tensor, conv: Tensor, frames: Tensor):
        return self.encoder.step_frames(feats, (sub1, sub2), kv, conv, frames, self.chunk, self.left)


class MemoryGraph(nn.Module):
    """memory [B, S, d] -> cross-attention keys and values [layers, B, H, S, dk] (once per decode call)."""

    def __init__(self, net: SpeechTranslator):
        super().__init__()
        self.layers = net.decoder.layers

    def forward(self, memory: Tensor):
        kvs = [layer.cross_attn.project_memory(memory) for layer in self.layers]
        return torch.stack([k for k, _ in kvs]), torch.stack([v for _, v in kvs])


class DecoderStepGraph(nn.Module):
    """(tokens [B, t], pos [B, t], self caches [layers, B, H, P, dk], self_mask [B, P + t], memory keys/values,
    mem_mask [B, S]) -> (log-probabilities of the last position [B, V], new self caches, cross-attention
    [layers, B, H, t, S]). Masks are True where a key is real; rows may be left-padded."""

    def __init__(self, net: SpeechTranslator):
        super().__init__()
        dec = net.decoder
        self.embed, self.pos, self.layers, self.norm = dec.embed, dec.pos, dec.layers, dec.norm
        self.scale = math.sqrt(dec.cfg.d_model)

    def forward(self, tokens, pos, self_k, self_v, self_mask, mem_k, mem_v, mem_mask):
        x = self.embed(tokens) * self.scale + self.pos(pos)
        b, t, d = x.shape
        p = self_k.shape[3]
        qi = torch.arange(t, device=x.device) + p
        kj = torch.arange(p + t, device=x.device)
        causal = kj[None, :] <= qi[:, None]  # [t, P + t]
        itself = kj[None, :] == qi[:, None]  # a padding query still sees itself: no all-masked rows, no NaN
        smask = causal[None, None] & (self_mask[:, None, None, :] | itself[None, None])
        cmask = mem_mask[:, None, None, :]
        ks, vs, ws = [], [], []
        for li, layer in enumerate(self.layers):
            sa = layer.self_attn
            h = layer.self_norm(x)
            q, k, v = (z.reshape(b, t, sa.h, sa.dk).transpose(1, 2) for z in sa.qkv(h).chunk(3, dim=-1))
            k = torch.cat([self_k[li], k], dim=2)
            v = torch.cat([self_v[li], v], dim=2)
            scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(sa.dk))
            y = scores.masked_fill(~smask, float("-inf")).softmax(-1) @ v
            x = x + sa.out(y.transpose(1, 2).reshape(b, t, d))
            ca = layer.cross_attn
            hq = ca.q(layer.cross_norm(x)).reshape(b, t, ca.h, ca.dk).transpose(1, 2)
            scores = (hq @ mem_k[li].transpose(-1, -2)) * (1.0 / math.sqrt(ca.dk))
            w = scores.masked_fill(~cmask, float("-inf")).softmax(-1)
            x = x + ca.out((w @ mem_v[li]).transpose(1, 2).reshape(b, t, d))
            x = x + layer.ff(x)
            ks.append(k)
            vs.append(v)
            ws.append(w)
        logits = self.norm(x[:, -1]) @ self.embed.weight.T
        return F.log_softmax(logits, dim=-1), torch.stack(ks), torch.stack(vs), torch.stack(ws)


def _example_inputs(net: SpeechTranslator):
    """Example tensors for tracing; sizes differ from each other so no two dynamic axes get unified."""
    cfg = net.cfg
    enc = net.encoder
    b, t = 2, 2 * cfg.chunk_frames
    c1, c2 = enc.sub.init_cache(b, cfg.n_mels)
    layers, d = cfg.enc_layers, cfg.d_model
    encoder = (torch.randn(b, 4 * t, cfg.n_mels), c1, c2, torch.zeros(layers, b, 2, cfg.left_frames, d),
               torch.zeros(layers, b, d, cfg.conv_kernel - 1), torch.tensor([0, cfg.chunk_frames]))
    s, p, tq = 13, 5, 3
    h, dk, L = cfg.n_heads, cfg.d_model // cfg.n_heads, cfg.dec_layers
    memory = (torch.randn(b, s, d),)
    decoder = (torch.ones(b, tq, dtype=torch.long), torch.arange(p, p + tq).repeat(b, 1), torch.randn(L, b, h, p, dk),
               torch.randn(L, b, h, p, dk), torch.ones(b, p + tq, dtype=torch.bool), torch.randn(L, b, h, s, dk),
               torch.randn(L, b, h, s, dk), torch.ones(b, s, dtype=torch.bool))
    return encoder, memory, decoder


SPECS = {
    "encoder.onnx": (["feats", "sub1", "sub2", "kv", "conv", "frames"], ["out", "new_sub1", "new_sub2", "new_kv", "new_conv"],
                     {"feats": {0: "batch", 1: "feat_frames"}, "sub1": {0: "batch"}, "sub2": {0: "batch"},
                      "kv": {1: "batch"}, "conv": {1: "batch"}, "frames": {0: "batch"}}),
    "memory.onnx": (["memory"], ["mem_k", "mem_v"], {"memory": {0: "batch", 1: "mem_len"}}),
    "decoder.onnx": (["tokens", "pos", "self_k", "self_v", "self_mask", "mem_k", "mem_v", "mem_mask"],
                     ["logp", "new_self_k", "new_self_v", "attention"],
                     {"tokens": {0: "batch", 1: "new_tokens"}, "pos": {0: "batch", 1: "new_tokens"},
                      "self_k": {1: "batch", 3: "prefix"}, "self_v": {1: "batch", 3: "prefix"},
                      "self_mask": {0: "batch", 1: "keys"}, "mem_k": {1: "batch", 3: "mem_len"},
                      "mem_v": {1: "batch", 3: "mem_len"}, "mem_mask": {0: "batch", 1: "mem_len"}}),
}


def export_graphs(net: SpeechTranslator, out_dir: Path) -> list[Path]:
    """Write encoder.onnx, memory.onnx and decoder.onnx (fp32) into out_dir."""
    net = net.eval()
    cfg = net.cfg
    # the wrappers must be in eval mode too: the exporter puts each module back in its own mode afterwards,
    # and a wrapper left in training mode would switch the shared submodules (and the caller's model) to training
    modules = {"encoder.onnx": EncoderStepGraph(net, cfg.chunk_frames, cfg.left_frames).eval(),
               "memory.onnx": MemoryGraph(net).eval(), "decoder.onnx": DecoderStepGraph(net).eval()}
    examples = dict(zip(FILES, _example_inputs(net)))
    paths = []
    for name in FILES:
        inputs, outputs, axes = SPECS[name]
        path = out_dir / name
        with torch.no_grad():
            torch.onnx.export(modules[name], examples[name], str(path), input_names=inputs, output_names=outputs,
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        paths.append(path)
    return paths


def quantize_int8(out_dir: Path) -> None:
    """Dynamic int8 quantisation (weights int8, activations quantised on the fly) of every graph, in place."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))  # "consider pre-processing" notes
    for name in FILES:
        path = out_dir / name
        tmp = path.with_suffix(".int8.onnx")
        quantize_dynamic(str(path), str(tmp), weight_type=QuantType.QInt8)
        tmp.replace(path)


def export_onnx(model, out_dir: str | Path, *, int8: bool = False) -> Path:
    """Export a loaded `StreamingSpeechModel` into a self-contained folder that `load_onnx_model` reads."""
    from streamst.streaming_model import StreamingSpeechModel

    if not isinstance(model, StreamingSpeechModel):
        raise ValueError("ONNX export supports streamst's own models (not converted Whisper checkpoints)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net = model.net
    export_graphs(net, out)
    if int8:
        quantize_int8(out)
    np.savez(out / "weights.npz", cmvn_mean=model.mean.numpy(), cmvn_std=model.std.numpy(),
             ctc_weight=net.ctc.weight.detach().numpy(), ctc_bias=net.ctc.bias.detach().numpy())
    (out / "src_tokenizer.model").write_bytes(model.src_tokenizer.model_proto)
    (out / "tgt_tokenizer.model").write_bytes(model.tokenizer.model_proto)
    meta = {"format": "streamst-onnx", "version": 1, "config": net.cfg.to_dict(), "int8": int8, "task": model.task,
            "src_lang": model.src_lang, "tgt_lang": model.tgt_lang, "name": model.name, "meta": model.meta}
    (out / "model.json").write_text(json.dumps(meta, indent=1, default=str))
    return out
