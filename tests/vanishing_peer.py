"""A client in a network namespace of its own, whose link the test can cut: the client
vanishes as a machine switched off or a cut network does, with no FIN and no reset, so the
server's packets to it are never acknowledged. Needs root (CAP_NET_ADMIN) and `ip`."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

# The client's side sends a request, prints the answer's first line, then holds on.
_CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
sock.sendall(sys.stdin.buffer.read(int(sys.argv[3])))
print(sock.recv(65536).split(b"\\r\\n")[0].decode(), flush=True)
sys.stdin.read()
"""


def available() -> str | None:
    """Why a vanishing peer cannot be made here, or None when it can."""
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return None


@dataclass
class Peer:
    server_address: str  # the server's address as the peer reaches it
    namespace: str
    device: str

    @contextlib.contextmanager
    def request(self, port: int, request: bytes) -> Iterator[str]:
        """Send `request` from inside the namespace; the answer's status line, while the
        connection stays open (the client holds it until the block ends)."""
        where = [self.server_address, str(port), str(len(request))]
        client = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-c", _CLIENT, *where],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        try:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(request)
            client.stdin.flush()
            yield client.stdout.readline().decode().strip()
        finally:
            client.kill()
            client.wait()

    def cut(self) -> None:
        """The link goes down: nothing the server sends arrives, nothing comes back."""
        _ip("netns", "exec", self.namespace, "ip", "link", "set", self.device, "down")


@contextlib.contextmanager
def vanishing_peer() -> Iterator[Peer]:
    """A namespace joined to this one by a veth pair on a /30 of 10.231.0.0/16 picked by
    process id (tests in parallel get their own); all of it removed on the way out."""
    tag = os.getpid() % 16_000
    namespace, here, there = f"conveyor-vp-{tag}", f"cvp{tag}a", f"cvp{tag}b"
    base = f"10.231.{tag // 64}.{(tag % 64) * 4}"
    server, client = _host(base, 1), _host(base, 2)
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        _ip("link", "set", there, "netns", namespace)
        _ip("addr", "add", f"{server}/30", "dev", here)
        _ip("link", "set", here, "up")
        inside = ("netns", "exec", namespace, "ip")
        _ip(*inside, "addr", "add", f"{client}/30", "dev", there)
        _ip(*inside, "link", "set", there, "up")
        yield Peer(server, namespace, there)
    finally:
        # Deleting the namespace deletes its end of the pair, and with it this one.
        _ip("netns", "del", namespace)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", here, quiet=True)  # gone already, unless the move failed


def _host(base: str, offset: int) -> str:
    head, last = base.rsplit(".", 1)
    return f"{head}.{int(last) + offset}"


def _ip(*args: str, quiet: bool = False) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=quiet)
