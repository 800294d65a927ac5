"""The reader behind a job's live SSE stream: it ends after the job's last event, when that
event ends the job."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from api.live import Page, Reader
from api.representations import event_json
from services import jobs
from services.event_types import TERMINAL_JOB_EVENTS


def job_reader(
    session_factory: sessionmaker[Session],
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    max_bytes: int,
) -> Reader:
    """Pages of about `max_bytes` of events' data (LIVE_PAGE_MAX_BYTES)."""

    def read(after_version: int, limit: int) -> Page:
        with session_factory() as session:
            events, full = jobs.events_page(
                session,
                owner_id=owner_id,
                job_id=job_id,
                from_version=after_version + 1,
                limit=limit,
                max_bytes=max_bytes,
            )
            ended = not events and jobs.is_terminal(
                jobs.get(session, owner_id=owner_id, job_id=job_id).status
            )
        # Only the stream's last event can end it: a job retried after it ended has an
        # ending in the middle of its stream (`job.failed`, `job.retried`, a new run), and
        # the stream used to stop there while the job ran again. A full page (by count or by
        # bytes) may have more behind its last event; the next read tells.
        ended = ended or (not full and bool(events) and events[-1].type in TERMINAL_JOB_EVENTS)
        frames = [(event.version, event.type, event_json(event)) for event in events]
        return Page(frames, ended=ended, full=full)

    return read
