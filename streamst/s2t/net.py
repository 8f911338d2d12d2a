"""`S2TNet`: encoder (+ CTC head and compression) and decoder of one S2T model, fairseq's parameter names."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from streamst.s2t.config import S2TConfig
from streamst.s2t.conformer import ConformerEncoder
from streamst.s2t.ctc import compress
from streamst.s2t.transformer import Decoder, TransformerEncoder


@dataclass
class EncoderOutput:
    """What the decoder attends to, and how its frames map to the 40 ms audio frames."""

    memory: Tensor  # [S, D] decoder memory (compressed frames when the model compresses)
    audio_frames: int  # frames after subsampling (40 ms each with two stride-2 convolutions)
    weights: Tensor | None = None  # [audio_frames, S] CTC compression weights (None: S == audio_frames)
    ctc_logits: Tensor | None = None  # [audio_frames, ctc vocab]


class Encoder(nn.Module):
    """Wraps the Transformer or Conformer encoder and adds fairseq's `ctc_fc` head after layer `ctc_layer`."""

    def __init__(self, cfg: S2TConfig):
        super().__init__()
        self.cfg = cfg
        self.body = TransformerEncoder(cfg) if cfg.encoder == "transformer" else ConformerEncoder(cfg)
        self.ctc_fc = nn.Linear(cfg.d_model, cfg.ctc_vocab) if cfg.ctc_layer else None

    def forward(self, feats: Tensor) -> EncoderOutput:
        """One utterance's normalised features [frames, n_mels] -> EncoderOutput."""
        cfg = self.cfg
        x = self.body.embed(feats.unsqueeze(0))
        frames = x.shape[1]
        weights = logits = None
        for i, layer in enumerate(self.body.layers):
            x = layer(x)
            if self.ctc_fc is not None and i + 1 == cfg.ctc_layer:
                logits = self.ctc_fc(x[0])
                if cfg.ctc_compress != "none":
                    y, weights = compress(x[0], logits, cfg.ctc_compress, cfg.ctc_compress_fixed_ratio,
                                          cfg.ctc_compress_max_out)
                    x = y.unsqueeze(0)
        return EncoderOutput(self.body.finish(x)[0], frames, weights, logits)


class S2TNet(nn.Module):
    """The whole model; `state_dict()` keys are fairseq's (encoder.* / decoder.*), minus buffers."""

    def __init__(self, cfg: S2TConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def load_fairseq_state(self, state: dict[str, Tensor]) -> None:
        """Load fairseq-named weights; a clear ValueError names what is missing or left over."""
        ours = {fairseq_name(k): k for k in self.state_dict()}
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        if missing or unexpected:
            raise ValueError("the checkpoint's weights do not fit this architecture: "
                             f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, "
                             f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}")
        mine = self.state_dict()
        bad = [f for f, k in ours.items() if tuple(state[f].shape) != tuple(mine[k].shape)]
        if bad:
            f = bad[0]
            raise ValueError(f"weight {f} is {tuple(state[f].shape)} in the checkpoint but "
                             f"{tuple(mine[ours[f]].shape)} in the architecture its config describes")
        self.load_state_dict({k: state[f].float() for f, k in ours.items()})

    def fairseq_state(self) -> dict[str, Tensor]:
        """The weights under fairseq's names (what `load_fairseq_state` takes)."""
        return {fairseq_name(k): v for k, v in self.state_dict().items()}


def fairseq_name(key: str) -> str:
    """Our parameter name -> fairseq's (the encoder body is not a separate module in fairseq)."""
    return key.replace("encoder.body.", "encoder.", 1)


@torch.inference_mode()
def encode_features(net: S2TNet, feats: Tensor) -> EncoderOutput | None:
    """Run the encoder on [frames, n_mels] features; None when they give no encoder frame."""
    if net.encoder.body.subsample.out_frames(feats.shape[0]) == 0:
        return None
    return net.encoder(feats)
