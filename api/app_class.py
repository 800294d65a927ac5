"""The Flask application class: APIFlask with one per-request cost taken away."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apiflask import APIFlask


class ConveyorApp(APIFlask):
    """Flask asks, for each of a request's dozen hooks and its view, whether the function
    is a coroutine function (`inspect.iscoroutinefunction`, about 5 % of a job read's CPU).
    The answer never changes for a function, so it is asked once per function."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._runnable: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        runnable = self._runnable.get(func)
        if runnable is None:
            runnable = super().ensure_sync(func)
            self._runnable[func] = runnable
        return runnable
