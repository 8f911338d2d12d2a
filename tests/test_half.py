"""HalfLinear: the fbgemm path and the block-widened fallback give the fp16 weights' product (with a bias too), for one
row and many; `half_linears` swaps every linear layer of a network and keeps what it computes."""
import torch
from torch import nn

from streamst.whisper.half import HalfLinear, fbgemm_available, half_linears


def test_both_paths_equal_the_fp16_weights_product():
    torch.manual_seed(0)
    weight, bias = torch.randn(5000, 64) * 0.05, torch.randn(5000)
    for b in (None, bias):
        fast = HalfLinear(weight, b)
        if fbgemm_available():  # x86 builds: the fast path must be the one taken
            assert fast.packed is not None and fast.weight is None
        widened = HalfLinear(weight, b, fbgemm=False)  # the path of a torch build without fbgemm
        assert widened.packed is None
        reference = lambda h: h @ weight.half().float().T + (0 if b is None else b)  # noqa: E731
        for hidden in (torch.randn(64), torch.randn(1, 64), torch.randn(7, 64), torch.randn(2, 3, 64)):
            for layer in (fast, widened):
                out = layer(hidden)
                assert out.shape == hidden.shape[:-1] + (5000,)
                assert torch.allclose(out, reference(hidden), atol=1e-4)
                assert torch.equal(out.argmax(-1), reference(hidden).argmax(-1))


def test_half_linears_swaps_nested_layers_and_keeps_the_function():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Sequential(nn.Linear(64, 16, bias=False)))
    x = torch.randn(5, 32)
    with torch.no_grad():
        want = net(x)
        half_linears(net)
        got = net(x)
    assert not any(isinstance(m, nn.Linear) for m in net.modules())
    assert sum(isinstance(m, HalfLinear) for m in net.modules()) == 2
    assert not torch.equal(got, want) and torch.allclose(got, want, atol=1e-2)  # fp16 weights: close, not equal
