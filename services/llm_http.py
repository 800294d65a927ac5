"""The HTTP client the providers' SDK talks through: the SDK's own, with a bound on how much
of an answer is read.

Nothing else bounded it: the SDK reads a streamed answer for as long as the provider sends,
and its event decoder keeps an unfinished line in memory whole. A provider that sent one
endless line grew a pool process past 1.7 GB before the job's timeout ended it. So the
answer's bytes are counted as they arrive, before the SDK decodes anything, and reading
stops at `max_bytes` in all or `max_line_bytes` without a line break (an event of the
stream is a line; a chunk of a chat answer is a few hundred bytes, a tool call's arguments
at most some kilobytes at once).

A conversation, not only its answer, is held to `max_bytes`: each request carries every
turn before it (the job's input, the model's answers and tool calls, the tools' results),
so the answer to a request is read up to what the request left of the bound, and a
request that alone passes it is not sent. With each answer under the bound, the steps of
a job could grow its request past it (eight answers of 32 MiB: 256 MiB).

The bytes counted are the answer's own, decompressed: counted on the wire, 65 KB of gzip
holding 32 MiB passed a bound of 64 KiB, and 32 MiB of it could hold 32 GB. The bound
inflates a compressed answer itself, at most `INFLATE_PIECE_BYTES` at a time, so it stops
at its limit with no more than that piece beyond it in memory; it offers the provider only
the encodings it can inflate so (gzip, deflate, the latter wrapped or raw as httpx took
it), and hands the SDK the answer as plain bytes.

The bound wraps the response's byte stream in `send`, rather than the transport, so the
client keeps everything else of the SDK's (its connection limits, redirects, the
environment's proxies).

A request can also be cut from another thread (`abort_requests`), when the job is
cancelled or runs out of time: the SDK's own way out, closing the response, exists only
once the provider has sent its headers, and a provider can take minutes to send them.
Closing a socket does not wake a thread blocked reading it (Linux), so the client keeps
the sockets of the connections it opens (httpcore's `trace` extension reports each one
as it connects) and shuts them down: the blocked read ends at once, as if the provider
had hung up.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx2
import openai

MAX_LINE_BYTES = 1024 * 1024
INFLATE_PIECE_BYTES = 64 * 1024
# Content-Encoding: the zlib window bits that may inflate it, tried in turn on its first
# bytes. RFC 9110's deflate is the zlib format, but some servers send it raw, without the
# wrapping, and httpx reads both: so does the bound.
_INFLATABLE = {"gzip": (16 + zlib.MAX_WBITS,), "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}
ACCEPT_ENCODING = "gzip, deflate"


class BadAnswer(Exception):
    """An answer the bound stopped reading."""


class AnswerTooLarge(BadAnswer):
    """The provider's answer passed a bound. `whole`: the conversation, the request and its
    answer together (a true answer that long will be as long when asked again), else one
    line of the answer (a broken stream)."""

    def __init__(self, limit: int, *, whole: bool) -> None:
        super().__init__(limit, whole)
        self.limit = limit
        self.whole = whole


class UnreadableAnswer(BadAnswer):
    """An answer in an encoding we did not offer, or compressed data that does not
    inflate. `what` says which, in words for the job's owner."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class _BoundedStream(httpx2.SyncByteStream):
    """An answer read up to `left` bytes, what its request left of the conversation's
    bound `limit`, and `max_line_bytes` without a line break."""

    def __init__(
        self, inner: Any, encoding: str, left: int, limit: int, max_line_bytes: int
    ) -> None:
        self._inner = inner
        self._encoding = encoding
        self._left = left
        self._limit = limit
        self._max_line_bytes = max_line_bytes

    def __iter__(self) -> Iterator[bytes]:
        total = line = 0
        for chunk in _decoded(self._inner, self._encoding):
            total += len(chunk)
            if total > self._left:
                raise AnswerTooLarge(self._limit, whole=True)
            # Server-sent events end a line with \n, \r\n or \r.
            end = max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
            line = line + len(chunk) if end < 0 else len(chunk) - end - 1
            if line > self._max_line_bytes:
                raise AnswerTooLarge(self._max_line_bytes, whole=False)
            yield chunk

    def close(self) -> None:
        self._inner.close()


def _decoded(chunks: Iterable[bytes], encoding: str) -> Iterator[bytes]:
    """The answer's own bytes, of a body in `encoding` (its Content-Encoding)."""
    if encoding in ("", "identity"):
        return iter(chunks)
    if encoding not in _INFLATABLE:
        raise UnreadableAnswer("sent its answer in an encoding it was not offered")
    return _inflated(chunks, _INFLATABLE[encoding])


def _inflated(chunks: Iterable[bytes], formats: tuple[int, ...]) -> Iterator[bytes]:
    """The inflated bytes of `chunks`, in pieces of at most INFLATE_PIECE_BYTES, in the
    first of `formats` (window bits) that reads their first bytes."""
    untried = iter(formats)
    inflater = zlib.decompressobj(next(untried))
    started = False
    try:
        for chunk in chunks:
            data = chunk
            while data:
                try:
                    piece = inflater.decompress(data, INFLATE_PIECE_BYTES)
                except zlib.error:
                    wbits = None if started else next(untried, None)
                    if wbits is None:
                        raise
                    inflater = zlib.decompressobj(wbits)
                    continue
                started = True
                yield piece
                data = inflater.unconsumed_tail
        yield inflater.flush()
    except zlib.error:
        raise UnreadableAnswer("sent a compressed answer that does not inflate") from None


class _Sockets:
    """The sockets of the connections a client opened, weakly held (the pool closes and
    drops connections as it likes), to shut down on demand."""

    # httpcore's trace events whose return value is a new connection's stream.
    _CONNECTED = ("connect_tcp.complete", "connect_unix_socket.complete", "start_tls.complete")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    def trace(self, event: str, info: dict[str, Any]) -> None:
        if event.endswith(self._CONNECTED):
            stream = info.get("return_value")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with self._lock:
                    self._sockets.add(sock)

    def shut_down(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            # OSError: closed already, or never connected. The plain socket's method, not
            # SSLSocket's, which would also drop the TLS state under the reading thread.
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class BoundedClient(openai.DefaultHttpxClient):
    """The SDK's default client (its timeouts, limits and redirects), holding at most
    `max_conversation_bytes` of a request and its answer together, whose requests in
    flight can be cut from another thread (`abort_requests`). Use one per thread: an abort
    cuts all of its requests."""

    def __init__(
        self, *, max_conversation_bytes: int, max_line_bytes: int = MAX_LINE_BYTES, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._max_conversation_bytes = max_conversation_bytes
        self._max_line_bytes = min(max_line_bytes, max_conversation_bytes)
        self._sockets = _Sockets()

    def abort_requests(self) -> None:
        """End every request of this client at once, from any thread: each one waiting for
        or reading an answer fails as a connection the provider closed. Idle pooled
        connections go too (the pool finds them closed and opens new ones)."""
        self._sockets.shut_down()

    def send(
        self, request: httpx2.Request, *, stream: bool = False, **kwargs: Any
    ) -> httpx2.Response:
        request.extensions["trace"] = _chained(self._sockets.trace, request.extensions.get("trace"))
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        left = self._max_conversation_bytes - len(request.read())  # the conversation so far
        if left < 0:
            raise AnswerTooLarge(self._max_conversation_bytes, whole=True)
        # Always streamed here, so that an answer the caller wants whole is read through
        # the bound too.
        response = super().send(request, stream=True, **kwargs)
        encoding = response.headers.get("content-encoding", "").strip().lower()
        response.stream = _BoundedStream(
            response.stream, encoding, left, self._max_conversation_bytes, self._max_line_bytes
        )
        # The bound hands on the answer inflated: httpx must not inflate it again.
        response.headers.pop("content-encoding", None)
        if not stream:
            try:
                response.read()
            except BaseException:
                response.close()
                raise
        return response


def _chained(
    ours: Callable[[str, dict[str, Any]], None], theirs: Callable[..., Any] | None
) -> Callable[[str, dict[str, Any]], None]:
    if theirs is None:
        return ours

    def both(event: str, info: dict[str, Any]) -> None:
        ours(event, info)
        theirs(event, info)

    return both
