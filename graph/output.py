"""Per-turn options that shape the answer itself: stop sequences and the sampling seed.

They travel like the other options (the input, the run's context, `configurable`; `resolve_options`)
and are checked here, once, for every way in: a value a backend would refuse mid-turn (Vertex AI takes
an int32 seed; llama.cpp and vLLM more) is refused before any call, with `OptionError`, whose text
names the option and says what to send instead. An OpenAI client sees that text and `param` as is.
"""

from __future__ import annotations

from typing import Any

from graph.validation import InvalidInput

MAX_STOP_SEQUENCES = 4  # OpenAI's limit (Gemini takes 5, llama.cpp and vLLM more)
SEED_MIN, SEED_MAX = -(2**31), 2**31 - 1  # Gemini's seed is an int32: the range every backend takes


class OptionError(InvalidInput):
    """An option the graph cannot honour; `param` is its name in OpenAI's request body."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def stop_sequences(value: Any) -> list[str]:
    """`stop` as a list ("" and None: none); a string is one sequence, as OpenAI reads it."""
    if value is None or value == "":
        return []
    sequences = [value] if isinstance(value, str) else value
    if not isinstance(sequences, list | tuple) or not all(isinstance(s, str) for s in sequences):
        raise OptionError("`stop` must be a string or a list of strings.", "stop")
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise OptionError(
            f"`stop` takes at most {MAX_STOP_SEQUENCES} sequences ({len(sequences)} sent): send fewer.",
            "stop",
        )
    if any(s == "" for s in sequences):
        raise OptionError("`stop` sequences must not be empty: leave out the empty one.", "stop")
    return list(sequences)


def check_seed(value: Any) -> int | None:
    """`seed` as an int within the range every backend takes (None: none)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError("`seed` must be an integer.", "seed")
    if not SEED_MIN <= value <= SEED_MAX:
        raise OptionError(
            f"`seed` must be between {SEED_MIN} and {SEED_MAX} (Gemini's seed is 32 bits): send a "
            "smaller one.",
            "seed",
        )
    return value
