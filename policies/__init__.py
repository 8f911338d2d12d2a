"""Read/write policies: decide, after each chunk, how much of the decoder's continuation to commit."""
from streamst.policies.base import (
    Candidate,
    Decision,
    Policy,
    PolicyView,
    parse_policy,
    register,
    word_starts,
)

__all__ = ["Candidate", "Decision", "Policy", "PolicyView", "parse_policy", "register", "word_starts"]
