"""What the kernel knows of a connection's sent bytes (Linux's `TCP_INFO`).

`struct tcp_info` (include/uapi/linux/tcp.h) is read at fixed offsets: the kernel only
appends fields to it, and hands back as many bytes as the caller asks for and it has. The
three used here:

| offset | field                | type  | since |
|--------|----------------------|-------|-------|
| 24     | `tcpi_unacked`       | `u32` | 2.6   | segments sent, not yet acknowledged
| 120    | `tcpi_bytes_acked`   | `u64` | 4.1   | bytes the peer has acknowledged, ever
| 144    | `tcpi_notsent_bytes` | `u32` | 4.6   | bytes written but not yet sent (window)

A kernel that answers fewer than `_SIZE` bytes, or another system (whose `TCP_INFO`, where
there is one, is another struct), gives no `Sent`.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

_UNACKED = struct.Struct("=I")
_BYTES_ACKED = struct.Struct("=Q")
_NOTSENT = struct.Struct("=I")
_UNACKED_AT, _BYTES_ACKED_AT, _NOTSENT_AT = 24, 120, 144
_SIZE = _NOTSENT_AT + _NOTSENT.size
_TCP_INFO = getattr(socket, "TCP_INFO", None) if sys.platform == "linux" else None


@dataclass(frozen=True)
class Sent:
    """`acked`: bytes of ours the client has acknowledged on this connection so far;
    `waiting`: whether any of ours still wait for it (in flight, or not yet sent)."""

    acked: int
    waiting: bool


def sent(sock: socket.socket) -> Sent | None:
    """The connection's `Sent`, or None where the kernel does not tell it."""
    if _TCP_INFO is None:
        return None
    info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _SIZE)
    if len(info) < _SIZE:
        return None
    (unacked,) = _UNACKED.unpack_from(info, _UNACKED_AT)
    (acked,) = _BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)
    (notsent,) = _NOTSENT.unpack_from(info, _NOTSENT_AT)
    return Sent(acked=acked, waiting=unacked > 0 or notsent > 0)
