"""The contract between the streaming session and a read/write policy.

A policy sees what it needs and no more (DESIGN.md): how much source has been read, the committed words,
the decoder's candidate continuation with its pieces and cross-attention. It answers with a `Decision`.
Policies are immutable configuration; their per-stream bookkeeping is an explicit state value
(`init_state()` / `decide(view, state) -> (decision, state)`), so one policy object serves many streams.
"""
from __future__ import annotations

import dataclasses
import keyword
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np

WORD_START = "\u2581"  # SentencePiece's word-start marker


@dataclass(frozen=True)
class Candidate:
    """The decoder's continuation after the committed prefix (EOS excluded).

    `attention` is cross-attention of each candidate token over the current encoder memory,
    shaped [layers, heads, len(tokens), frames]; None for models that do not expose it.
    """

    tokens: list[int]
    pieces: list[str]
    attention: np.ndarray | None = None
    ended: bool = False  # the decoder produced EOS right after these tokens
    # it ended at a sentence's end, in a pause (`Hypothesis.ended_in_pause`): every token has been heard whole, as
    # at the end of a stream (the last word would otherwise wait for a next one that the decoder may write only
    # after the model restarts, and its attention drifts into the silence, where a policy takes it for unheard)
    ended_in_pause: bool = False


@dataclass(frozen=True)
class PolicyView:
    """Everything a policy may look at after one chunk."""

    candidate: Candidate
    committed: list[str]  # committed words so far (the whole stream, not only the kept history)
    frames: int  # encoder frames in the decoder's memory now
    frame_ms: float  # source ms one encoder frame covers
    source_ms: float  # source audio consumed so far in this stream, ms
    chunks: int  # chunks read so far
    finished: bool  # the stream has ended: the session will flush whatever is left after this
    source_words: int | None = None  # words in the source so far, estimated from CTC (None if unknown)
    # The forced decoder prefix (the kept committed history) and its cross-attention over the current memory,
    # [layers, heads, len(prefix_pieces), frames], from the same decoder pass as the candidate. StreamAtt
    # needs it to find the earliest frame the kept history attends to; None if the model exposes none.
    prefix_pieces: tuple[str, ...] = ()
    prefix_attention: np.ndarray | None = None


@dataclass(frozen=True)
class Decision:
    """How many candidate tokens to commit; the session rounds down to whole words.

    StreamAtt also says how much history to keep: `drop_frames` encoder frames are forgotten from the front
    of the memory and only the last `keep_words` committed words stay as the decoder's forced prefix.
    """

    tokens: int
    drop_frames: int = 0
    keep_words: int | None = None


class Policy(Protocol):
    """A read/write policy. Its optional capabilities are declared (`PolicyBase` gives the defaults), never probed:
    `writes_only_at_end` (the session skips decoding until the stream ends), `needs_source_words` (the view
    carries the CTC word count), and, when `stop_hooks` is True, two methods the session asks before decoding
    (with a view whose candidate is empty) so that it can stop decoding where `decide` will commit no more:
    `max_commit_words(view, state) -> int | None`, the most words it can commit on this chunk (wait-k), and
    `late_token(view, state) -> test | None`, its test on one token's cross-attention [layers, heads, 1, frames]
    that flags the first token it would not commit (AlignAtt, EDAtt). The session then decodes only a partial
    caption's worth of words past that point."""

    name: str
    writes_only_at_end: bool
    needs_source_words: bool
    stop_hooks: bool

    def init_state(self) -> Any: ...

    def decide(self, view: PolicyView, state: Any) -> tuple[Decision, Any]: ...

    def max_commit_words(self, view: PolicyView, state: Any) -> int | None: ...

    def late_token(self, view: PolicyView, state: Any) -> Callable[[np.ndarray], bool] | None: ...

    def spec(self) -> str: ...


class PolicyBase:
    """The defaults of a policy's optional capabilities: none of them (see `Policy`)."""

    name = ""
    writes_only_at_end = False
    needs_source_words = False
    stop_hooks = False

    def max_commit_words(self, view: PolicyView, state: Any) -> int | None:
        return None

    def late_token(self, view: PolicyView, state: Any) -> Callable[[np.ndarray], bool] | None:
        return None


def word_starts(pieces: list[str]) -> list[int]:
    """Indices of the pieces that begin a new word (the first piece always does)."""
    return [i for i, p in enumerate(pieces) if i == 0 or p.startswith(WORD_START)]


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a dataclass policy reachable through `parse_policy("name:key=value,...")`."""

    def deco(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return deco


def _convert(value: str, typ: Any, key: str, name: str) -> Any:
    typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ) if isinstance(typ, str) else typ
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return typ(value)
    except ValueError:
        raise ValueError(f"policy {name!r}: {key}={value!r} is not a valid {getattr(typ, '__name__', typ)}") from None


def _spec_key(field_name: str) -> str:
    """A field named after a Python keyword carries a trailing underscore (`lambda_`); specs spell it `lambda`."""
    return field_name[:-1] if field_name.endswith("_") and keyword.iskeyword(field_name[:-1]) else field_name


def _field_name(spec_key: str) -> str:
    return spec_key + "_" if keyword.iskeyword(spec_key) else spec_key


def parse_policy(spec: str) -> Policy:
    """Build a policy from a spec string such as `waitk:k=3` or `alignatt:frames=4,exclude_last=1`.

    A bad name or key raises ValueError naming the valid ones.
    """
    import streamst.policies.builtin  # noqa: F401  (registers the policies)

    name, _, args = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; valid policies: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[name]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, value = item.partition("=")
        key = _field_name(key.strip())
        if not eq or key not in fields:
            valid = ", ".join(f"{_spec_key(f)}={fields[f].default!r}" for f in fields)
            raise ValueError(f"policy {name!r}: bad setting {item!r}; valid keys: {valid}")
        kwargs[key] = _convert(value.strip(), fields[key].type, _spec_key(key), name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"policy {name!r}: {e}") from None


def format_spec(policy: Any) -> str:
    """The canonical spec string of a dataclass policy (all settings, in field order)."""
    items = ",".join(f"{_spec_key(f.name)}={getattr(policy, f.name)}" for f in dataclasses.fields(policy))
    return f"{policy.name}:{items}" if items else policy.name
