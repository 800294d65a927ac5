"""What an agent's `params` may hold, by provider: what its runner reads, with the values it
can run with. A chat agent's params go to the model as they are; a name the runner does
not send (a typo) was stored and ignored without a word, and a value of the wrong type or
range failed every job at the provider, as an echo agent's `delay_ms` out of range failed
every job at its run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The longest an echo agent pretends to work: a typo in params must not park a worker.
MAX_ECHO_DELAY_MS = 600_000
MAX_STOP_SEQUENCES = 4


def _number(low: float, high: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}"
        return None

    return check


def _integer(low: int | None = None) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if low is not None and value < low:
            return f"must be at least {low}"
        return None

    return check


def _stop(value: Any) -> str | None:
    sequences = [value] if isinstance(value, str) else value
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        return "must be a string or a list of strings"
    if len(sequences) > MAX_STOP_SEQUENCES:
        return f"must hold at most {MAX_STOP_SEQUENCES} sequences"
    return None


# The parameters a chat provider's request carries (services/chat_runner.py sends these
# and no others), with the ranges OpenAI's API documents.
CHAT_PARAMS: dict[str, Callable[[Any], str | None]] = {
    "temperature": _number(0, 2),
    "top_p": _number(0, 1),
    "max_tokens": _integer(1),
    "seed": _integer(),
    "stop": _stop,
}
# Echo's: only the delay can fail every job; its other hooks (`fail`,
# `transient_failures`) and any other name are the caller's to play with.
ECHO_PARAMS: dict[str, Callable[[Any], str | None]] = {
    "delay_ms": _number(0, MAX_ECHO_DELAY_MS),
}


def problems(provider: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, detail) for each entry of `params` the provider's jobs could not run with."""
    echo = provider == "echo"
    rules = ECHO_PARAMS if echo else CHAT_PARAMS
    found = []
    for name, value in params.items():
        rule = rules.get(name)
        if rule is not None:
            wrong = rule(value)
        elif echo:
            wrong = None
        else:
            wrong = f"not sent to the model: the {provider} provider takes {', '.join(rules)}"
        if wrong:
            found.append((f"params.{name}", wrong))
    return found
