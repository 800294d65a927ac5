"""The HTTP client the providers' SDK talks through: the SDK's own, with a bound on how much
of an answer is read.

Nothing else bounded it: the SDK reads a streamed answer for as long as the provider sends,
and its event decoder keeps an unfinished line in memory whole. A provider that sent one
endless line grew a pool process past 1.7 GB before the job's timeout ended it. So the
answer's bytes are counted as they arrive, before any decoding, and reading stops at
`max_bytes` in all or `max_line_bytes` without a line break (an event of the stream is a
line; a chunk of a chat answer is a few hundred bytes, a tool call's arguments at most
some kilobytes at once).

The bound wraps the response's byte stream in `send`, rather than the transport, so the
client keeps everything else of the SDK's (its connection limits, redirects, the
environment's proxies).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai

MAX_LINE_BYTES = 1024 * 1024


class AnswerTooLarge(Exception):
    """The provider's answer passed a bound. `whole`: the answer as a whole (a true answer
    that long will be as long when asked again), else one line of it (a broken stream)."""

    def __init__(self, limit: int, *, whole: bool) -> None:
        super().__init__(limit, whole)
        self.limit = limit
        self.whole = whole


class _BoundedStream(httpx2.SyncByteStream):
    def __init__(self, inner: Any, max_bytes: int, max_line_bytes: int) -> None:
        self._inner = inner
        self._max_bytes = max_bytes
        self._max_line_bytes = max_line_bytes

    def __iter__(self) -> Iterator[bytes]:
        total = line = 0
        for chunk in self._inner:
            total += len(chunk)
            if total > self._max_bytes:
                raise AnswerTooLarge(self._max_bytes, whole=True)
            # Server-sent events end a line with \n, \r\n or \r.
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            line = line + len(chunk) if end < 0 else len(chunk) - end - 1
            if line > self._max_line_bytes:
                raise AnswerTooLarge(self._max_line_bytes, whole=False)
            yield chunk

    def close(self) -> None:
        self._inner.close()


class BoundedClient(openai.DefaultHttpxClient):
    """The SDK's default client (its timeouts, limits and redirects), reading at most
    `max_answer_bytes` of each answer."""

    def __init__(
        self, *, max_answer_bytes: int, max_line_bytes: int = MAX_LINE_BYTES, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._max_answer_bytes = max_answer_bytes
        self._max_line_bytes = min(max_line_bytes, max_answer_bytes)

    def send(
        self, request: httpx2.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx2.Response:
        # Always streamed here, so that an answer the caller wants whole is read through
        # the bound too.
        response = super().send(request, stream=True, **kwargs)
        response.stream = _BoundedStream(
            response.stream, self._max_answer_bytes, self._max_line_bytes
        )
        if not stream:
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response
