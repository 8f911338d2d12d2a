"""HalfLogits: the fbgemm path and the block-widened fallback give the fp16 weights' logits, for one row and many."""
import torch

from streamst.whisper.half_logits import HalfLogits


def test_both_paths_equal_the_fp16_weights_product():
    torch.manual_seed(0)
    embedding = torch.randn(5000, 64) * 0.05
    fast = HalfLogits(embedding)
    if "fbgemm" in torch.backends.quantized.supported_engines:  # x86 builds: the fast path must be the one taken
        assert fast.packed is not None and fast.weight is None
    widened = HalfLogits(embedding, fbgemm=False)  # the path of a torch build without fbgemm
    reference = lambda h: h @ embedding.half().float().T  # noqa: E731
    for hidden in (torch.randn(64), torch.randn(1, 64), torch.randn(7, 64)):
        for head in (fast, widened):
            out = head(hidden)
            assert out.shape == hidden.shape[:-1] + (5000,)
            assert torch.allclose(out, reference(hidden), atol=1e-4)
            assert torch.equal(out.argmax(-1), reference(hidden).argmax(-1))
