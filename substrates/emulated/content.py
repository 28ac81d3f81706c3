"""Where an emulated engine's text comes from: synthetic, scripted per step, or a recorded run.

A source answers with a whole text (`ContentSource.text_for`); an engine reads it through
`content_for`, a `LazyText` that hands out one streamed piece at a time, so that a stream holds
one chunk, never the list of all of them. `SyntheticContent` is lazy all the way: its pieces are
computed from their position, and the whole text is only built when a caller asks for it.
"""

from __future__ import annotations

import functools
import json
import math
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from agentrt.errors import BadResponse, ConfigError
from agentrt.substrate import InferenceRequest
from substrates.emulated.tokens import count_tokens, split_tokens
from substrates.emulated.trajectory import TrajectoryContent

__all__ = [
    "parse_content",
    "ContentSource",
    "LazyContentSource",
    "LazyText",
    "ReplayContent",
    "ScriptedContent",
    "SyntheticContent",
    "content_for",
    "count_tokens",
    "split_tokens",
]

_VOCABULARY = (
    "the model reads the failing test and finds that the parser drops the last field when a "
    "line ends with a separator so the patch keeps an empty field and the suite passes again "
    "after checking the docs for the expected behaviour of trailing separators in records"
).split(" ")


@runtime_checkable
class LazyText(Protocol):
    """**Protocol:** a response's text, ``tokens`` long, handed out one streamed piece at a time.

    ``piece(i)`` is the ``i``-th of the ``tokens`` pieces that `split_tokens` would cut (they join
    back to ``text()``); pieces past the end are empty. Only ``text()`` builds the whole string.
    """

    @property
    def tokens(self) -> int:
        """Length in tokens (the engine times the generation by it)."""
        ...

    def piece(self, index: int) -> str:
        """The ``index``-th streamed piece ("" past the end)."""
        ...

    def text(self) -> str:
        """The whole text."""
        ...


class _Text:
    """`LazyText` over a string already in memory: pieces are slices, cut when asked for."""

    __slots__ = ("_size", "_text", "tokens")

    def __init__(self, text: str, tokens: int) -> None:
        self._text = text
        self.tokens = tokens
        self._size = math.ceil(len(text) / tokens) if tokens > 1 and text else max(len(text), 1)

    def piece(self, index: int) -> str:
        start = index * self._size
        return self._text[start : start + self._size] if index >= 0 else ""

    def text(self) -> str:
        return self._text


@runtime_checkable
class ContentSource(Protocol):
    """**Protocol:** the text an emulated engine returns for a request.

    ``text_for`` returns the text and its length in tokens. The engine times the generation by
    that length, so a scripted answer of 40 tokens takes 40 tokens of decode time.

    Example:
        >>> class Fixed:
        ...     def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        ...         return "ok", 1
        >>> isinstance(Fixed(), ContentSource)
        True
    """

    def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        """Text for ``request`` of at most ``max_tokens`` tokens, and its token count."""
        ...


@runtime_checkable
class LazyContentSource(Protocol):
    """**Protocol:** a `ContentSource` that can also answer lazily, as a `LazyText`.

    Engines prefer ``lazy_text_for`` when a source has it (see `content_for`): a long streamed
    answer then costs one piece of memory at a time.
    """

    def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        """Text for ``request`` of at most ``max_tokens`` tokens, and its token count."""
        ...

    def lazy_text_for(self, request: InferenceRequest, max_tokens: int) -> LazyText:
        """The same text as ``text_for``, as a `LazyText`."""
        ...


def content_for(source: ContentSource, request: InferenceRequest, max_tokens: int) -> LazyText:
    """The answer of ``source`` to ``request`` as a `LazyText`, lazily when the source can.

    Example:
        >>> req = InferenceRequest.from_prompt("p", step_id="s")
        >>> lazy = content_for(SyntheticContent(seed=1), req, 1_000_000)
        >>> lazy.tokens, len(lazy.piece(0)) < 10
        (1000000, True)
    """
    if isinstance(source, LazyContentSource):
        return source.lazy_text_for(request, max_tokens)
    text, tokens = source.text_for(request, max_tokens)
    return _Text(text, max(1, tokens))


class SyntheticContent:
    """Filler text of exactly the requested length (``max_tokens``), reproducible per step.

    Each token is one short word; where the words start in the vocabulary depends on the seed
    and the step id only. Lazy: streaming a million tokens holds one piece at a time.
    """

    __slots__ = ("_seed", "_starts")

    def __init__(self, *, seed: int | None = None) -> None:
        self._seed = seed or 0
        self._starts: dict[str | None, int] = {}  # step id -> first word

    def _start(self, request: InferenceRequest) -> int:
        step = request.step_id
        start = self._starts.get(step)
        if start is None:
            start = zlib.crc32(f"{self._seed}:{step}".encode()) % len(_VOCABULARY)
            if len(self._starts) < 4096:
                self._starts[step] = start
        return start

    def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        """``max_tokens`` words."""
        return _words(self._start(request), max_tokens), max_tokens

    def lazy_text_for(self, request: InferenceRequest, max_tokens: int) -> LazyText:
        """``max_tokens`` words, computed piece by piece from their position."""
        return _SyntheticText(self._start(request), max(1, max_tokens))


#: Texts up to this many words are cached (requests repeat a few shapes); longer ones are not,
#: so the cache stays a few MB whatever clients ask for.
_CACHED_WORDS = 4096


def _words(start: int, count: int) -> str:
    if count <= _CACHED_WORDS:
        return _cached_words(start, count)
    n = len(_VOCABULARY)
    return " ".join(_VOCABULARY[(start + i) % n] for i in range(count))


@functools.lru_cache(maxsize=1024)
def _cached_words(start: int, count: int) -> str:
    n = len(_VOCABULARY)
    return " ".join(_VOCABULARY[(start + i) % n] for i in range(count))


@functools.lru_cache(maxsize=64)
def _cycle(start: int) -> tuple[str, tuple[int, ...]]:
    """One lap of the vocabulary from word ``start``, each word followed by a space.

    Also the offsets where its words end (prefix lengths, spaces included).
    """
    words = _VOCABULARY[start:] + _VOCABULARY[:start]
    ends = [0]
    for w in words:
        ends.append(ends[-1] + len(w) + 1)
    return "".join(w + " " for w in words), tuple(ends)


class _SyntheticText:
    """``count`` words from word ``start``, cut into pieces from their position alone.

    The text is periodic (one lap of the vocabulary), so its length and any slice are
    arithmetic: no piece needs the text before it.
    """

    __slots__ = ("_lap", "_length", "_size", "_start", "tokens")

    def __init__(self, start: int, count: int) -> None:
        self._start = start
        self.tokens = count
        lap, ends = _cycle(start)
        self._lap = lap
        laps, rest = divmod(count, len(_VOCABULARY))
        self._length = laps * len(lap) + ends[rest] - 1  # no space after the last word
        self._size = math.ceil(self._length / count) if count > 1 else self._length

    def piece(self, index: int) -> str:
        a = index * self._size
        if index < 0 or a >= self._length:
            return ""
        b = min(a + self._size, self._length)
        lap = self._lap
        offset = a % len(lap)
        out = lap[offset : offset + (b - a)]
        while len(out) < b - a:  # a piece longer than the rest of the lap wraps around
            out += lap[: b - a - len(out)]
        return out

    def text(self) -> str:
        return _words(self._start, self.tokens)


class ScriptedContent:
    """Answers written in advance, keyed by step id; a list is consumed one answer per call.

    Steps without an answer get ``default`` (synthetic text when None). The token count is
    `count_tokens` of the answer, truncated at the request's ``max_output_tokens``.

    Example:
        >>> source = ScriptedContent({"patch": "--- a/x.py +++ b/x.py"})
        >>> source.text_for(InferenceRequest.from_prompt("p", step_id="patch"), 256)[1]
        6
    """

    def __init__(
        self,
        answers: Mapping[str, str | Sequence[str]],
        *,
        default: str | None = None,
        seed: int | None = None,
    ) -> None:
        self._answers: dict[str, deque[str]] = {
            k: deque([v] if isinstance(v, str) else list(v)) for k, v in answers.items()
        }
        self._default = default
        self._synthetic = SyntheticContent(seed=seed)

    def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        """The scripted answer for the request's step."""
        queue = self._answers.get(request.step_id or "")
        if queue:
            text = queue.popleft() if len(queue) > 1 else queue[0]
        elif self._default is not None:
            text = self._default
        else:
            return self._synthetic.text_for(request, max_tokens)
        tokens = count_tokens(text)
        if tokens > max_tokens:
            text = text[: max_tokens * 4]
            tokens = max_tokens
        return text, max(tokens, 1)


class ReplayContent:
    """The text and lengths of a recorded run (``agentrt run --json`` output), step by step.

    Raises:
        ConfigError: the file is not a recorded run.
    """

    def __init__(self, recorded: str | Path | Mapping[str, Any]) -> None:
        if isinstance(recorded, Mapping):
            data: Any = recorded
        else:
            path = Path(recorded)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise ConfigError(f"{path}: cannot read a recorded run ({exc})") from exc
        steps = data.get("steps") if isinstance(data, Mapping) else None
        if not isinstance(steps, list):
            raise ConfigError(
                "a recorded run is the JSON of `agentrt run ... --json` (with a `steps` list)"
            )
        self._steps: dict[str, tuple[str, int]] = {
            str(s["id"]): (str(s.get("text", "")), int(s.get("output_tokens", 0)))
            for s in steps
            if isinstance(s, Mapping) and "id" in s
        }

    def text_for(self, request: InferenceRequest, max_tokens: int) -> tuple[str, int]:
        """The recorded step's text and length (capped at ``max_tokens``)."""
        recorded = self._steps.get(request.step_id or "")
        if recorded is None:
            known = ", ".join(sorted(self._steps)) or "none"
            raise BadResponse(
                f"the recorded run has no step {request.step_id!r} to replay (recorded: {known})"
            )
        text, tokens = recorded
        return text, max(1, min(tokens or count_tokens(text), max_tokens))


def parse_content(spec: str, *, seed: int | None = None) -> ContentSource:
    """Content from ``synthetic``, ``scripted:FILE``, ``replay:RUN.json`` or ``trajectory:FILE``.

    ``scripted:FILE`` is YAML (step id -> answer); ``replay:RUN.json`` the JSON of a recorded
    `agentrt run`; ``trajectory:FILE`` a recorded trajectory (see `agentrt.trajectory`).

    Raises:
        ConfigError: an unknown form or an unreadable file.
    """
    kind, _, rest = spec.partition(":")
    if kind == "synthetic" and not rest:
        return SyntheticContent(seed=seed)
    if kind == "replay" and rest:
        return ReplayContent(Path(rest))
    if kind == "trajectory" and rest:
        return TrajectoryContent(Path(rest))
    if kind == "scripted" and rest:
        try:
            answers = yaml.safe_load(Path(rest).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{rest}: cannot read scripted answers ({exc})") from exc
        if not isinstance(answers, dict):
            raise ConfigError(f"{rest}: scripted answers are a mapping of step id -> text")
        return ScriptedContent({str(k): v for k, v in answers.items()}, seed=seed)
    raise ConfigError(
        f"unknown content {spec!r}; use synthetic, scripted:FILE, replay:RUN.json or "
        "trajectory:FILE"
    )
