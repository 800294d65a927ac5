"""Cutting a model request from another thread, against a real (fake) provider server: a
cancel or a deadline must not wait for a provider that has not answered yet."""

import gzip
import threading
import time
import tracemalloc
import zlib

import httpx2
import pytest
from sqlalchemy.orm import sessionmaker

from services.agent_runner import FreeRun, Stopped
from services.agent_tools import ToolBox
from services.chat_runner import ChatRunner
from services.llm import ProviderConfig, Providers
from services.llm_http import AnswerTooLarge, BoundedClient
from tests.fake_openai import FakeOpenAI, Turn
from tests.helpers import poll

# The provider holds its answer this long; a cut request ends far sooner.
HELD_S = 10.0
CUT_WITHIN_S = 3.0


@pytest.fixture
def fake():
    server = FakeOpenAI().start()
    yield server
    server.stop()


class StoppableRun(FreeRun):
    """A run control whose `stop` does what the worker's watcher does on a cancel."""

    def __init__(self) -> None:
        super().__init__()
        self._aborts = []
        self._stopped = threading.Event()

    def checkpoint(self) -> None:
        if self._stopped.is_set():
            raise Stopped("cancelled")

    def on_stop(self, abort) -> None:
        self._aborts.append(abort)

    def stop(self) -> None:
        self._stopped.set()
        for abort in self._aborts:
            abort()


def stop_when(ready, stop) -> threading.Thread:
    """Call `stop` once `ready()` (the provider holds its answer by then)."""

    def run() -> None:
        poll(lambda: ready() or None, timeout=HELD_S)
        stop()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("held", "stop_once"),
    [
        # The SDK's stream exists only once headers arrive: nothing could close it before.
        (Turn(text="too late", delay_s=HELD_S), lambda fake: fake.requests),
        # Closing the stream did not wake the read either (8 s for an 8 s stall, measured).
        (Turn(text="stalls midway", chunk_delay_s=HELD_S), lambda fake: fake.chunks_sent),
    ],
    ids=["before the first byte", "in the middle of the answer"],
)
def test_a_stop_ends_an_attempt_whose_provider_holds_its_answer(fake, held, stop_once):
    """Else the attempt, and its pool process, waited out the request's timeout."""
    fake.then(held)
    providers = Providers({"openai": ProviderConfig(fake.base_url, "sk-test", HELD_S * 2)})
    chat = ChatRunner(providers, ToolBox(sessionmaker()))
    control = StoppableRun()
    stopper = stop_when(lambda: stop_once(fake), control.stop)

    started = time.monotonic()
    with pytest.raises(Stopped):
        chat({"provider": "openai", "model": "m"}, {"text": "hi"}, control)
    elapsed = time.monotonic() - started
    stopper.join()

    assert elapsed < CUT_WITHIN_S, f"the attempt ended after {elapsed:.1f} s"


def test_abort_cuts_a_request_on_a_reused_keep_alive_connection(fake):
    """A provider keeps connections alive; the second request's socket was opened for
    the first, and is cut all the same."""
    fake.then(Turn(text="first"), Turn(text="held", delay_s=HELD_S))
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    ports = []
    with BoundedClient(max_conversation_bytes=1 << 20, timeout=HELD_S * 2) as client:

        def post() -> httpx2.Response:
            response = client.post(
                f"{fake.base_url}/chat/completions",
                json=body,
                extensions={"trace": lambda event, info: remember_port(event, info, ports)},
            )
            return response

        assert post().status_code == 200  # not streamed: the connection stays open
        stopper = stop_when(lambda: len(fake.requests) == 2, client.abort_requests)
        started = time.monotonic()
        with pytest.raises(httpx2.TransportError):
            post()
        elapsed = time.monotonic() - started
        stopper.join()
        assert len(ports) == 1, "the second request did not reuse the first's connection"
        assert elapsed < CUT_WITHIN_S, f"the request ended after {elapsed:.1f} s"

        fake.then(Turn(text="after"))
        assert post().json()["choices"][0]["message"]["content"] == "after"  # a new one


def remember_port(event: str, info: dict, ports: list) -> None:
    """A trace of the caller's own, which the client must keep calling beside its own."""
    if event == "connection.connect_tcp.complete":
        ports.append(info["return_value"].get_extra_info("client_addr")[1])


# An answer of 32 MiB, some 32 KB compressed: comment lines of a stream.
INFLATED_BYTES = 32 * 1024 * 1024
BOUND = 64 * 1024
COMPRESS = {"gzip": gzip.compress, "deflate": zlib.compress}


@pytest.fixture(scope="module")
def comment_lines() -> bytes:
    return b": keep-alive\n" * (INFLATED_BYTES // 13)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("streamed", [True, False], ids=["streamed", "whole"])
def test_a_compressed_answer_is_cut_at_its_inflated_size(fake, comment_lines, encoding, streamed):
    """The bound counted bytes on the wire: 32 MiB arrived as 32 KB and passed a bound of
    64 KiB; at the default bound (32 MiB) an answer could hold 32 GB. Now it is cut at
    the bound, without inflating the rest."""
    body = COMPRESS[encoding](comment_lines)
    assert len(body) < BOUND
    fake.then(Turn(raw=body, headers={"Content-Encoding": encoding}))
    url = f"{fake.base_url}/chat/completions"
    request = {"model": "m", "messages": []}
    tracemalloc.start()
    try:
        with (
            BoundedClient(max_conversation_bytes=BOUND, timeout=10) as client,
            pytest.raises(AnswerTooLarge) as cut,
        ):
            if streamed:
                with client.stream("POST", url, json=request) as response:
                    for _ in response.iter_bytes():
                        pass
            else:
                client.post(url, json=request)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert cut.value.whole and cut.value.limit == BOUND
    assert peak < 4 * 1024 * 1024, f"{peak} bytes held while reading"


def test_a_compressed_answer_within_its_bound_reads_whole(fake):
    answer = b'{"text": "' + b"y" * 100_000 + b'"}'
    fake.then(
        Turn(
            raw=gzip.compress(answer),
            raw_type="application/json",
            headers={"Content-Encoding": "gzip"},
        )
    )
    with BoundedClient(max_conversation_bytes=2 * len(answer), timeout=10) as client:
        response = client.post(f"{fake.base_url}/chat/completions", json={})
    assert response.content == answer and "content-encoding" not in response.headers
    assert fake.requests[0]["_accept_encoding"] == "gzip, deflate"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def test_a_raw_deflate_answer_is_read_as_httpx_read_it(fake, comment_lines):
    """Some servers send `deflate` without its zlib wrapping; httpx reads both, and the
    bound, which inflates answers itself now, answered "does not inflate" to this one."""
    answer = b'{"text": "' + b"z" * 100_000 + b'"}'
    fake.then(
        Turn(
            raw=raw_deflate(answer),
            raw_type="application/json",
            headers={"Content-Encoding": "deflate"},
        )
    )
    with BoundedClient(max_conversation_bytes=2 * len(answer), timeout=10) as client:
        assert client.post(f"{fake.base_url}/chat/completions", json={}).content == answer
    # And it is cut at its inflated size as the wrapped one is.
    fake.then(Turn(raw=raw_deflate(comment_lines), headers={"Content-Encoding": "deflate"}))
    with (
        BoundedClient(max_conversation_bytes=BOUND, timeout=10) as client,
        pytest.raises(AnswerTooLarge),
    ):
        client.post(f"{fake.base_url}/chat/completions", json={})


def test_a_request_that_alone_passes_the_bound_is_not_sent(fake):
    """A request carries the conversation so far: past the bound, it ends the job as a
    conversation too long, before the provider sees (and bills) it."""
    with (
        BoundedClient(max_conversation_bytes=BOUND, timeout=10) as client,
        pytest.raises(AnswerTooLarge) as cut,
    ):
        client.post(f"{fake.base_url}/chat/completions", content=b"x" * (BOUND + 1))
    assert cut.value.whole and fake.requests == []
