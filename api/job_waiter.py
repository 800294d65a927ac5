"""Long-poll: hold an answer until a job ends, without holding a database connection.

The waiter registers with the process's notifier before reading the job, so a change that
lands between the two is never missed. Between reads no session is open.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from api.disconnect import Gone, wait_while_connected
from api.live import FALLBACK_POLL_S
from api.notifier import Busy, Notifier
from services.after_commit import job_key
from services.jobs import is_terminal

JobView = dict[str, Any]  # services.job_view.job_json
ReadJob = Callable[[], JobView]


def wait_until_terminal(
    notifier: Notifier, job_id: uuid.UUID, read: ReadJob, wait_s: float, *, gone: Gone
) -> JobView:
    """The job once terminal, or as it is when `wait_s` has passed (or its client has gone).
    When every waiting slot is taken the current state is answered at once: the client
    simply polls again."""
    job = read()
    if wait_s <= 0 or is_terminal(job["status"]):
        return job
    deadline = time.monotonic() + wait_s
    try:
        with notifier.watch(job_key(job_id)) as changed:
            job = read()
            while not is_terminal(job["status"]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                timeout = remaining if notifier.connected.is_set() else FALLBACK_POLL_S
                if wait_while_connected(changed, min(remaining, timeout), gone) is None:
                    break
                changed.clear()
                job = read()
    except Busy:
        return job
    return job
