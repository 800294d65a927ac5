"""The gunicorn worker class of the web process (gunicorn.conf.py names it).

Gunicorn's gthread worker hands each request to a thread pool; when every thread is busy
the request waits in the pool's queue, where the application cannot see it. This worker
notes when each request was queued and tells `api.admission` in the thread that runs it,
so admission control counts that wait too.
"""

from __future__ import annotations

import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from api.admission import mark_arrival


class AdmissionThreadWorker(ThreadWorker):  # type: ignore[misc]
    def enqueue_req(self, conn: Any) -> None:
        conn.conveyor_queued_at = time.monotonic()
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        if not conn.initialized and not conn.data_ready:
            # A new connection: gunicorn waits here for its first bytes, and the request
            # arrives when they do, not when the connection was accepted. Count from when
            # the application sees it.
            mark_arrival(None)
        else:
            mark_arrival(getattr(conn, "conveyor_queued_at", None))
        return super().handle(conn)
