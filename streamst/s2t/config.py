"""`S2TConfig`: the architecture of a fairseq S2T / HF Speech2Text / FBK Conformer model, as plain values."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

ENCODERS = ("transformer", "conformer")
ACTIVATIONS = ("relu", "gelu", "swish", "silu")
COMPRESSIONS = ("none", "avg", "weighted", "softmax", "fixed")


@dataclass
class S2TConfig:
    """Sizes and switches; every name follows fairseq's argument of the same meaning."""

    vocab_size: int
    d_model: int = 256
    encoder: str = "transformer"  # "transformer" (s2t_transformer, HF Speech2Text) or "conformer" (FBK)
    encoder_layers: int = 12
    encoder_heads: int = 4
    encoder_ffn: int = 2048
    encoder_normalize_before: bool = True
    conv_kernel_sizes: list[int] = field(default_factory=lambda: [5, 5])
    conv_channels: int = 1024
    n_mels: int = 80
    scale_embedding: bool = True
    activation: str = "relu"
    max_source_positions: int = 6000
    # Conformer (FBK): depthwise kernel, feed-forward expansion, half-step (macaron) residuals
    conformer_kernel: int = 31
    conformer_ff_expansion: int = 4
    conformer_half_step: bool = True
    # CTC head after encoder layer `ctc_layer` (1-based; 0: none) and its compression of the sequence
    ctc_layer: int = 0
    ctc_vocab: int = 0
    ctc_compress: str = "none"
    ctc_compress_fixed_ratio: int = 4
    ctc_compress_max_out: int = -1
    decoder_layers: int = 6
    decoder_heads: int = 4
    decoder_ffn: int = 2048
    decoder_normalize_before: bool = True
    tied_output: bool = True
    max_target_positions: int = 1024
    pad: int = 1

    def __post_init__(self):
        if self.encoder not in ENCODERS:
            raise ValueError(f"unsupported encoder {self.encoder!r}; supported: {', '.join(ENCODERS)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {self.activation!r}; supported: {', '.join(ACTIVATIONS)}")
        if self.ctc_compress not in COMPRESSIONS:
            raise ValueError(f"unsupported CTC compression {self.ctc_compress!r}; supported: {', '.join(COMPRESSIONS)}")
        if self.ctc_compress != "none" and not 1 <= self.ctc_layer <= self.encoder_layers:
            raise ValueError(f"CTC compression needs a CTC layer in 1..{self.encoder_layers}, got {self.ctc_layer}")
        for name, heads in (("encoder", self.encoder_heads), ("decoder", self.decoder_heads)):
            if heads < 1 or self.d_model % heads:
                raise ValueError(f"{name} heads ({heads}) must divide the model width ({self.d_model})")
        self.conv_kernel_sizes = [int(k) for k in self.conv_kernel_sizes]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "S2TConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown S2T config keys {unknown} (a checkpoint from a newer streamst?)")
        return cls(**d)
