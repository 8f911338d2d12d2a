"""`Growing`: a state's tensor extended chunk by chunk; what a view holds never changes, branches included."""
import torch

from streamst.whisper.growing import Growing


def test_extending_the_newest_view_writes_into_its_room_without_copying():
    a = torch.randn(1, 2, 5, 3)
    g = Growing.of(a, 2)
    assert g.tensor.data_ptr() == a.data_ptr() and len(g) == 5
    parts = [a]
    g = g.extend(p := torch.randn(1, 2, 4, 3))  # the first extension moves it into storage with room
    parts.append(p)
    storage = g.storage
    for n in (1, 7, 16):
        g = g.extend(p := torch.randn(1, 2, n, 3))
        parts.append(p)
    assert g.storage is storage  # no copy while there was room
    assert torch.equal(g.tensor, torch.cat(parts, 2))


def test_a_branch_copies_and_leaves_both_views_as_they_were():
    base = Growing.of(torch.randn(4, 3), 0).extend(torch.randn(2, 3))
    first, second = torch.randn(3, 3), torch.randn(3, 3)
    kept = base.tensor.clone()
    one = base.extend(first)
    two = base.extend(second)  # base was extended already: this one copies
    assert two.storage is not one.storage
    assert torch.equal(one.tensor, torch.cat([kept, first])) and torch.equal(two.tensor, torch.cat([kept, second]))
    assert torch.equal(base.tensor, kept)


def test_dropping_the_front_shares_the_storage_and_extends_after_it():
    g = Growing.of(torch.arange(10.0)[:, None], 0).extend(torch.tensor([[10.0]]))
    dropped = g.drop_front(4)
    assert dropped.storage is g.storage and dropped.tensor[:, 0].tolist() == list(range(4, 11))
    longer = dropped.extend(torch.tensor([[11.0], [12.0]]))
    assert longer.tensor[:, 0].tolist() == list(range(4, 13)) and g.tensor[:, 0].tolist() == list(range(11))
    assert len(g.drop_front(50)) == 0
