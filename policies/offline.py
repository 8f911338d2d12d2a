"""`offline`: read everything, write everything at the end (the quality ceiling and latency floor)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamst.policies.base import Decision, PolicyBase, PolicyView, format_spec, register


@register("offline")
@dataclass(frozen=True)
class Offline(PolicyBase):
    writes_only_at_end = True  # the session skips decoding until the stream ends

    def init_state(self) -> Any:
        return None

    def decide(self, view: PolicyView, state: Any) -> tuple[Decision, Any]:
        return Decision(len(view.candidate.tokens) if view.finished else 0), state

    def spec(self) -> str:
        return format_spec(self)
