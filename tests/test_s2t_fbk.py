"""FBK's Conformer (issue #18, item 3): checkpoints built in FBK-fairseq's key layout, checked against a
functional restatement of FBK's forward pass (row-wise relative shift with its padding mask, CTC compression
loops), attention mapped back to audio frames, global CMVN, CTC word counts and a Session. No downloads."""
from __future__ import annotations

import math
from itertools import groupby

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamst.decoding import decode
from streamst.s2t import load_s2t
from streamst.s2t.conformer import relative_shift
from streamst.s2t.features import fbank
from streamst.s2t.fixtures import fbk_conformer_folder


def noise(seconds: float, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    envelope = 0.05 + 0.2 * np.abs(np.sin(np.linspace(0, 9, n)))
    return torch.from_numpy((rng.normal(0, 1, n) * envelope).astype(np.float32))


# ------------------------------------------------------------------ FBK's computation, restated from its code

def fbk_row_wise_shift(pos_score: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """FBK's RelativeMultiHeadAttention._relative_shift (the batch-safe, row-by-row version)."""
    b, h, t1, t2 = pos_score.shape
    padded = torch.cat([pos_score.new_zeros(b, h, t1, 1), pos_score], dim=-1)
    lengths = (t1 - padding_mask[:, :, 0].sum(-1)).tolist()
    out = pos_score.clone()
    for i in range(b):
        n = lengths[i]
        rows = padded[i, :, :n, :n + 1].reshape(h, n + 1, n)
        out[i, :, :n, :n] = rows[:, 1:, :]
    return out.masked_fill(padding_mask.unsqueeze(1), 0.0)


def fbk_pe(length: int, d: int) -> torch.Tensor:
    pe = torch.zeros(10000, d)
    position = torch.arange(0, 10000, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2).float() * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe[:length].unsqueeze(0)


def fbk_encoder(s: dict, feats: torch.Tensor, *, heads: int, ctc_layer: int, strategy: str, layers: int,
                fixed_ratio: int = 4, max_out: int = -1):
    """ConformerEncoder.forward for one utterance (batch of 1, no padding), straight from the state dict."""
    x = feats.unsqueeze(0).transpose(1, 2)
    for i in range(2):
        w = s[f"encoder.subsample.conv_layers.{i}.weight"]
        b = s[f"encoder.subsample.conv_layers.{i}.bias"]
        x = F.glu(F.conv1d(x, w, b, stride=2, padding=w.shape[2] // 2), dim=1)
    x = x.transpose(1, 2)  # B x T x C
    d = x.shape[2]
    x = x * math.sqrt(d)
    mask = torch.zeros(1, x.shape[1], dtype=torch.bool)

    def ln(name, y):
        return F.layer_norm(y, (d,), s[name + ".weight"], s[name + ".bias"])

    def lin(name, y):
        return F.linear(y, s[name + ".weight"], s.get(name + ".bias"))

    def ff(p, y):
        return lin(p + ".second_linear", F.silu(lin(p + ".first_linear", ln(p + ".layernorm", y))))

    ctc_logits = weights = None
    for li in range(layers):
        p = f"encoder.conformer_layers.{li}."
        x = ff(p + "first_feed_forward", x) * 0.5 + x
        # MultiHeadedSelfAttentionModule + RelativeMultiHeadAttention
        t = x.shape[1]
        att_mask = mask.unsqueeze(1).repeat([1, t, 1])
        att_mask = att_mask.logical_or(att_mask.transpose(1, 2))
        y = ln(p + "attention.layer_norm", x)
        a = p + "attention.attention."
        dh = d // heads
        q = lin(a + "query_proj", y).view(1, -1, heads, dh)
        k = lin(a + "key_proj", y).view(1, -1, heads, dh).permute(0, 2, 1, 3)
        v = lin(a + "value_proj", y).view(1, -1, heads, dh).permute(0, 2, 1, 3)
        pos = F.linear(fbk_pe(t, d), s[a + "pos_proj.weight"]).view(1, -1, heads, dh)
        content = torch.matmul((q + s[a + "u_bias"]).transpose(1, 2), k.transpose(2, 3))
        pos_score = torch.matmul((q + s[a + "v_bias"]).transpose(1, 2), pos.permute(0, 2, 3, 1))
        pos_score = fbk_row_wise_shift(pos_score, att_mask)
        score = (content + pos_score) / math.sqrt(d)
        score.masked_fill_(att_mask.unsqueeze(1), -1e9)
        attn = F.softmax(score, dim=-1).masked_fill(att_mask.unsqueeze(1), 0.0)
        context = torch.matmul(attn, v).transpose(1, 2).contiguous().view(1, -1, d)
        x = lin(a + "out_proj", context) + x
        # ConformerConvModule
        c = p + "conv_module."
        y = ln(c + "layernorm", x).transpose(1, 2)
        y = F.glu(F.conv1d(y, s[c + "first_pointwise_conv1d.weight"], s[c + "first_pointwise_conv1d.bias"]), dim=1)
        kern = s[c + "depthwise_conv1d.weight"]
        y = F.conv1d(y, kern, None, padding=(kern.shape[2] - 1) // 2, groups=d)
        y = F.batch_norm(y, s[c + "batchnorm.running_mean"], s[c + "batchnorm.running_var"], s[c + "batchnorm.weight"],
                         s[c + "batchnorm.bias"], training=False, eps=1e-5)
        y = F.conv1d(F.silu(y), s[c + "second_pointwise_conv1d.weight"], s[c + "second_pointwise_conv1d.bias"])
        x = y.transpose(1, 2) + x
        x = ff(p + "second_feed_forward", x) * 0.5 + x
        x = ln(p + "layernorm", x)
        if li + 1 == ctc_layer:  # CtcSupport.apply_ctc with average_same_ctc_features
            ctc_logits = lin("encoder.ctc_fc", x[0])
            if strategy == "none":
                continue
            prob = F.softmax(ctc_logits, dim=-1)
            pred = [(lab, len(list(g))) for lab, g in groupby(prob.argmax(-1).tolist())]
            pred = fbk_cap(pred, max_out)
            weights = fbk_weights(prob, pred, strategy, fixed_ratio)
            x = x.permute(0, 2, 1).bmm(weights.unsqueeze(0)).permute(0, 2, 1)
            mask = torch.zeros(1, x.shape[1], dtype=torch.bool)
    return x[0], ctc_logits, weights


def fbk_cap(pred, max_out):
    if max_out <= 0 or len(pred) <= max_out:
        return pred
    factor = math.ceil(len(pred) / max_out)
    out = []
    for i in range(0, len(pred), factor):
        counts, best, best_n, total = {}, None, 0, 0
        for lab, n in pred[i:i + factor]:
            counts[lab] = counts.get(lab, 0) + n
            if counts[lab] > best_n:
                best_n, best = counts[lab], lab
            total += n
        out.append((best, total))
    return out


def fbk_weights(prob, pred, strategy, fixed_ratio):
    if strategy == "fixed":
        new_len = math.ceil(prob.shape[0] / fixed_ratio)
        w = torch.zeros(prob.shape[0], new_len)
        total = sum(n for _, n in pred)
        for j in range(new_len):
            lo, hi = j * fixed_ratio, min(j * fixed_ratio + fixed_ratio, total)
            w[lo:hi, j] = 1.0 / (hi - lo)
            if hi == total:
                return w[:, : j + 1]
        return w
    w = torch.zeros(prob.shape[0], len(pred))
    done = 0
    for j, (lab, n) in enumerate(pred):
        if strategy == "avg":
            w[done:done + n, j] = 1.0 / n
        else:
            p = prob[done:done + n, lab]
            if strategy == "softmax":
                p = F.softmax(p, dim=0)
            w[done:done + n, j] = p / p.sum()
        done += n
    return w


# ------------------------------------------------------------------ tests

def test_relative_shift_is_fbks():
    for t in (1, 2, 7, 30):
        scores = torch.randn(1, 3, t, t)
        assert torch.equal(relative_shift(scores), fbk_row_wise_shift(scores, torch.zeros(1, t, t, dtype=torch.bool)))


@pytest.mark.parametrize("strategy,max_out", [("avg", -1), ("weighted", -1), ("softmax", -1), ("fixed", -1),
                                              ("avg", 3), ("none", -1)])
def test_encoder_equals_fbk_forward(tmp_path, strategy, max_out):
    folder = fbk_conformer_folder(tmp_path / "fbk-en-de", ctc_compress=strategy, ctc_layer=1, seed=1)
    if max_out > 0:
        obj = torch.load(folder / "checkpoint_avg7.pt", weights_only=False)
        obj["args"].ctc_compress_max_out_size = max_out
        torch.save(obj, folder / "checkpoint_avg7.pt")
    model = load_s2t(folder)
    state_dict = torch.load(folder / "checkpoint_avg7.pt", weights_only=False)["model"]
    audio = noise(2.1, 2)
    memory, state = model.encode(audio, model.init_state(), final=True)
    mean, std = np.load(folder / "gcmvn.npz")["mean"], np.load(folder / "gcmvn.npz")["std"]
    feats = torch.from_numpy(((fbank(audio).numpy() - mean) / std).astype(np.float32))
    ref, ref_ctc, ref_w = fbk_encoder(state_dict, feats, heads=2, ctc_layer=1, strategy=strategy, layers=2,
                                      max_out=max_out)
    enc = state.encoded
    assert torch.allclose(enc.ctc_logits, ref_ctc, atol=1e-4)
    assert enc.memory.shape == ref.shape and torch.allclose(enc.memory, ref, atol=1e-4)
    frames = model.net.encoder.body.subsample.out_frames(feats.shape[0])
    assert memory.shape == (frames, 16)  # the session's memory: one row per 40 ms audio frame
    if strategy == "none":
        assert enc.weights is None
        return
    assert torch.allclose(enc.weights, ref_w, atol=1e-6)
    assert enc.memory.shape[0] < frames and (max_out < 0 or enc.memory.shape[0] <= max_out)


def test_attention_maps_back_to_audio_frames(tmp_path):
    model = load_s2t(fbk_conformer_folder(tmp_path / "fbk-en-de", ctc_compress="avg", seed=3))
    memory, state = model.encode(noise(3.0, 4), model.init_state(), final=True)
    enc = state.encoded
    hyp, _ = model.decode(memory, [], state, max_tokens=12)
    direct = decode(model.net.decoder, enc.memory, [], 2, 2, max_tokens=12)  # over the compressed frames
    assert hyp.tokens == direct.tokens and hyp.tokens
    assert hyp.attention.shape == (1, 2, len(hyp.tokens), memory.shape[0])
    assert torch.allclose(hyp.attention, direct.attention @ enc.weights.T, atol=1e-6)
    assert torch.allclose(hyp.attention.sum(-1), torch.ones(1, 2, len(hyp.tokens)), atol=1e-5)
    with_prefix, _ = model.decode(memory, hyp.tokens[:3], state, max_tokens=4)
    assert with_prefix.prefix_attention.shape == (1, 2, 3, memory.shape[0])
    with pytest.raises(ValueError, match="compressed"):
        model.decode(memory.clone(), [], state)


def test_global_cmvn_and_ctc_words(tmp_path):
    folder = fbk_conformer_folder(tmp_path / "fbk-en-de", seed=5)
    model = load_s2t(folder)
    assert model.cmvn.kind == "global" and model.bundle.meta["data_config"] == "config_simul.yaml"
    x = torch.randn(7, 80) * 3 + 10
    stats = np.load(folder / "gcmvn.npz")
    assert torch.allclose(model.cmvn(x), torch.from_numpy((x.numpy() - stats["mean"]) / stats["std"]), atol=1e-5)
    assert "<ctc_blank>" in model.src_tokenizer.vocab
    memory, _ = model.encode(noise(2.0, 6), model.init_state(), final=True)
    best = memory._streamst_ctc.argmax(-1).tolist()
    blank = model.src_tokenizer.index["<ctc_blank>"]
    ids = [t for i, t in enumerate(best) if t != blank and (i == 0 or t != best[i - 1])]
    text = model.src_tokenizer.decode(ids)
    assert model.ctc_words(memory) == len(text.split())


@pytest.mark.parametrize("policy", ["alignatt:frames=2", "edatt:alpha=0.3", "waitk:k=2,unit=word",
                                    "streamatt:frames=2,history_words=2,max_memory_s=1.5"])
def test_session_over_the_compressed_conformer(tmp_path, policy):
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    model = load_s2t(fbk_conformer_folder(tmp_path / "fbk-en-de", seed=7))
    session = Session(model, parse_policy(policy), chunk_ms=320)
    audio = noise(4.0, 8).numpy()
    events = []
    for i in range(0, audio.size, 5120):
        events += session.push(audio[i:i + 5120])
    events += session.finish()
    words = [e for e in events if isinstance(e, Word)]
    assert words and all(w.start_ms is None or 0 <= w.start_ms <= session.source_ms for w in words)


def test_unsupported_conformer_settings(tmp_path):
    folder = fbk_conformer_folder(tmp_path / "fbk", seed=9)
    obj = torch.load(folder / "checkpoint_avg7.pt", weights_only=False)
    obj["args"].ctc_compress_strategy = "magic"
    torch.save(obj, folder / "checkpoint_avg7.pt")
    with pytest.raises(ValueError, match="unsupported CTC compression 'magic'"):
        load_s2t(folder)
    obj["args"].ctc_compress_strategy = "avg"
    obj["args"].distance_penalty = "log"
    torch.save(obj, folder / "checkpoint_avg7.pt")
    with pytest.raises(ValueError, match="distance-penalty"):
        load_s2t(folder)
