"""SIGTERM and SIGINT stop web, worker and beat gracefully: in-flight requests get their
answers, running jobs finish, and each process exits 0.

SIGTERM goes to the main process only, as an orchestrator sends it (`docker stop`,
Kubernetes); SIGINT goes to the whole process group, as a terminal's Ctrl-C does.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.conftest import Servers
from tests.ports import free_port
from tests.stack import STARTUP_S, Api, Stack, stack_on

pytestmark = pytest.mark.e2e

EXIT_DEADLINE_S = 30.0
JOB_MS = 1500
# (signal, to the whole group)
SIGNALS = [(signal.SIGTERM, False), (signal.SIGINT, True)]
# Celery ends a warm shutdown that an interrupt started with status 1 (EX_FAILURE), by design.
WORKER_EXIT = {signal.SIGTERM: 0, signal.SIGINT: 1}


def send(stack: Stack, name: str, signum: int, *, group: bool) -> None:
    if group:
        stack.signal_group(name, signum)
    else:
        stack.processes[name].send_signal(signum)


def wait_exit(stack: Stack, name: str) -> int:
    """The exit code of process `name`, which must end within the deadline; it is then
    forgotten by the stack, so the others are still checked for being alive."""
    process = stack.processes[name]
    others = {n: p for n, p in stack.processes.items() if n != name}

    def exited() -> bool:
        for other, proc in others.items():
            assert proc.poll() is None, f"{other} exited too"
        return process.poll() is not None

    stack.within(EXIT_DEADLINE_S, exited, f"{name} did not exit")
    del stack.processes[name]
    return process.returncode


def wait_status(api: Api, job_id: str, status: str, stack: Stack) -> None:
    def reached() -> bool:
        stack.assert_running()
        reply = api.get(f"/v1/jobs/{job_id}")
        assert reply.status == 200, reply
        assert reply.body["status"] in ("queued", status), reply.body
        return bool(reply.body["status"] == status)

    stack.within(STARTUP_S * 2, reached, f"job {job_id} never became {status}")


@contextlib.contextmanager
def signed_up(
    servers: Servers, worker_id: str, tmp_path: Path, scenario: str, *, worker: bool
) -> Iterator[tuple[Stack, Api, str]]:
    """A stack with its web (and a worker, if asked), a user and a slow echo agent."""
    with stack_on(servers, worker_id, tmp_path, scenario) as started:
        stack = started.stack
        api = stack.start_web()
        if worker:
            stack.start_worker()
        with stack.logs_on_failure():
            api.sign_up()
            yield stack, api, api.create_echo_agent(delay_ms=JOB_MS)


def test_a_worker_finishes_its_running_job_before_it_exits(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    with signed_up(servers, worker_id, tmp_path, "stopworker", worker=False) as setup:
        stack, api, agent_id = setup
        for number, (signum, group) in enumerate(SIGNALS):
            name = f"worker-{number}"
            stack.start_worker(name)  # the only worker: nobody else can finish the job
            job_id = api.submit(agent_id, f"finish me {number}").body["id"]
            wait_status(api, job_id, "running", stack)

            send(stack, name, signum, group=group)
            code = wait_exit(stack, name)

            # Already ended when the worker was gone, in the attempt it had started.
            job = api.get(f"/v1/jobs/{job_id}").body
            assert (job["status"], job["attempt"]) == ("succeeded", 1), job
            assert code == WORKER_EXIT[signum]
            assert job["output"] == {"text": f"finish me {number}"}
            assert [t for _, t in api.event_types(job_id)] == [
                "job.queued",
                "job.started",
                "job.succeeded",
            ]
            # The shutdown began while the job ran (the log file is appended to in order).
            lines = stack.log(name).read_text().splitlines()
            shutdown = next(i for i, line in enumerate(lines) if "Warm shutdown" in line)
            finished = next(i for i, line in enumerate(lines) if '"job.finished"' in line)
            assert shutdown < finished


def in_flight(process: psutil.Process, client_port: int) -> bool:
    """Whether a worker of gunicorn `process` holds the connection from client_port."""
    for worker in process.children():
        for connection in worker.net_connections("tcp"):
            if connection.raddr and connection.raddr.port == client_port:
                return True
    return False


def test_web_answers_in_flight_requests_before_it_exits(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """The long-poll's job can only run once the web has been told to stop: the worker is
    paused (SIGSTOP) until then. The web must keep the request open through its stop."""
    with signed_up(servers, worker_id, tmp_path, "stopweb", worker=True) as setup:
        stack, first, _ = setup
        agent_id = first.create_echo_agent(delay_ms=100)
        stack.within(STARTUP_S, lambda: stack.log_count("worker", "ready.") > 0, "worker")
        for number, (signum, group) in enumerate(SIGNALS):
            name, port = ("web", stack.env["PORT"]) if number == 0 else (f"web-{number}", "")
            if not port:
                port = str(free_port())
                stack.start_web(name, PORT=port)
            api = first.with_base(f"http://127.0.0.1:{port}")
            stack.signal_group("worker", signal.SIGSTOP)
            job_id = api.submit(agent_id, f"answer me {number}").body["id"]

            connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
            connection.connect()
            client_port = connection.sock.getsockname()[1]
            connection.request(
                "GET",
                f"/v1/jobs/{job_id}?wait=25",
                headers={"Authorization": f"Bearer {api.token}"},
            )
            master = psutil.Process(stack.processes[name].pid)

            def accepted(master: psutil.Process = master, client_port: int = client_port) -> bool:
                return in_flight(master, client_port)

            stack.within(10, accepted, "a gunicorn worker never took the request")
            send(stack, name, signum, group=group)
            # New connections are refused while the stop goes on: they used to be queued,
            # hang for the whole stop, and be reset.
            stack.within(5, lambda port=port: refused(int(port)), "new connections hung")
            stack.signal_group("worker", signal.SIGCONT)

            response = connection.getresponse()
            body = json.loads(response.read())
            connection.close()
            code = wait_exit(stack, name)

            assert (response.status, body["status"]) == (200, "succeeded"), body
            assert code == 0
            handled = f"Handling signal: {signal.Signals(signum).name[3:].lower()}"
            assert stack.log_count(name, handled) == 1


def test_open_live_tails_end_cleanly_when_the_web_stops(
    servers: Servers, worker_id: str, tmp_path: Path
) -> None:
    """A tail held the stop for its whole graceful_timeout (30 s), then was cut mid-body."""
    with signed_up(servers, worker_id, tmp_path, "stoptails", worker=False) as setup:
        stack, api, _ = setup
        appended = api.post("/v1/streams/s/events", {"events": [{"type": "t", "data": {}}]})
        assert appended.status == 201, appended
        connection = http.client.HTTPConnection("127.0.0.1", int(stack.env["PORT"]), timeout=20)
        connection.request(
            "GET",
            "/v1/streams/s/events",
            headers={"Authorization": f"Bearer {api.token}", "Accept": "text/event-stream"},
        )
        response = connection.getresponse()  # the first event has come: the tail is open
        assert response.status == 200
        stopped_at = time.monotonic()
        send(stack, "web", signal.SIGTERM, group=False)
        body = response.read()  # IncompleteRead if the body was cut
        connection.close()
        assert b"id: 1" in body
        assert wait_exit(stack, "web") == 0
        assert time.monotonic() - stopped_at < 10


def refused(port: int) -> bool:
    """A new connection is refused or reset (True), not left waiting (False)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as probe:
            probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            return probe.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


# Beat sends a due task every 10 ms here, so a signal often lands while a message is being
# sent: Celery's own handler then crashed beat (workers/operations.py) in about one stop in
# six; with four stops per signal, that would fail this test three times in four.
BEAT_STOPS_PER_SIGNAL = 4


def test_beat_exits_promptly_and_cleanly(servers: Servers, worker_id: str, tmp_path: Path) -> None:
    with stack_on(servers, worker_id, tmp_path, "stopbeat", SWEEP_INTERVAL_S="0.01") as scenario:
        stack = scenario.stack
        with stack.logs_on_failure():
            for number, (signum, group) in enumerate(SIGNALS * BEAT_STOPS_PER_SIGNAL):
                name = f"beat-{number}"
                stack.start_beat(name)

                def ticking(name: str = name) -> bool:
                    return stack.log_count(name, "Sending due task") > 0

                stack.within(30, ticking, f"{name} never sent a task")
                send(stack, name, signum, group=group)
                assert wait_exit(stack, name) == 0
                assert stack.log_count(name, "Traceback") == 0
                assert stack.log_count(name, "Couldn't apply scheduled task") == 0
