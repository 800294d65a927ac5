"""One webhook POST over the standard library's http.client, to an address already checked.

The connection goes to the checked IP while the Host header, TLS SNI and the certificate
check use the URL's host name. No redirect is followed, no proxy from the environment is
used, at most `max_bytes` of the answer are read, and a watchdog closes the socket when the
overall deadline passes, however slowly the receiver dribbles bytes.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from dataclasses import dataclass

from services.inputs import storable_text
from services.retry_after import seconds as retry_after_seconds
from services.ssrf import Target

EXCERPT_CHARS = 1024
USER_AGENT = "Conveyor-Webhooks/1.0"


@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code, or an error saying why there is none."""

    status_code: int | None
    duration_ms: int
    error: str | None = None
    excerpt: str | None = None
    retry_after_s: float | None = None

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target: Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target: Target, address: str, timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(target.host, target.port, timeout=timeout, context=self._tls)
        self._address = address

    def connect(self) -> None:
        raw = socket.create_connection((self._address, self.port), self.timeout)
        # The certificate must name the host of the URL, whatever address we dialled.
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)


class _Watchdog:
    """Shuts the connection's socket down when the deadline passes."""

    def __init__(self, timeout_s: float) -> None:
        self.fired = False
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._fire)
        self._timer.daemon = True

    def watch(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._connection = connection
            if self.fired:
                self._shut()

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut()

    def _shut(self) -> None:
        sock = self._connection.sock if self._connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._timer.cancel()


def post(
    target: Target, body: bytes, headers: dict[str, str], *, timeout_s: float, max_bytes: int
) -> Answer:
    """POST `body` to the target; the answer or the reason there is none."""
    started = time.monotonic()
    sent = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **headers,
    }
    with _Watchdog(timeout_s) as watchdog:
        connection: http.client.HTTPConnection | None = None
        try:
            connection, response = _send(target, body, sent, timeout_s, watchdog)
            retry_after = retry_after_seconds(response.getheader("Retry-After"))
            try:
                raw = response.read(max_bytes)
            except (OSError, http.client.HTTPException) as error:
                # The status is what counts; a body cut short only shortens the excerpt.
                raw = getattr(error, "partial", b"") or b""
            # A receiver's NUL could not be stored: the attempt was never recorded, and a
            # delivered message was sent again until it was given up as `dead`.
            excerpt = storable_text(raw.decode("utf-8", errors="replace")[:EXCERPT_CHARS])
            return Answer(response.status, _ms(started), None, excerpt, retry_after)
        except (OSError, http.client.HTTPException, ssl.SSLError) as error:
            if watchdog.fired or isinstance(error, TimeoutError):
                reason = f"no answer within {timeout_s:g} s"
            else:
                reason = _describe(error)
            return Answer(None, _ms(started), reason)
        finally:
            if connection is not None:
                connection.close()


def _send(
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout_s: float,
    watchdog: _Watchdog,
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """Connect to the first checked address that accepts, send, and read the status line."""
    kind = _PinnedHTTPS if target.scheme == "https" else _PinnedHTTP
    last_error: OSError | None = None
    for address in target.addresses:
        connection = kind(target, address, timeout_s)
        try:
            connection.connect()
        except OSError as error:
            connection.close()
            last_error = error
            if watchdog.fired:
                break
            continue
        watchdog.watch(connection)
        connection.putrequest("POST", target.path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        return connection, connection.getresponse()
    assert last_error is not None
    raise last_error


def _describe(error: BaseException) -> str:
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not accepted: {error.verify_message}"
    if isinstance(error, http.client.RemoteDisconnected):
        return "the receiver closed the connection without answering"
    text = str(error) or type(error).__name__  # may quote the receiver's bytes
    return storable_text(f"{type(error).__name__}: {text}"[:500])


def _ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
