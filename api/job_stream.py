"""The reader behind a job's live SSE stream: it ends after the terminal event."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session, sessionmaker

from api.live import Page, Reader
from api.representations import event_json
from services import jobs
from services.event_types import TERMINAL_JOB_EVENTS

PAGE = 200


def job_reader(
    session_factory: sessionmaker[Session], *, owner_id: uuid.UUID, job_id: uuid.UUID
) -> Reader:
    def read(after_version: int) -> Page:
        with session_factory() as session:
            events = jobs.events(
                session,
                owner_id=owner_id,
                job_id=job_id,
                from_version=after_version + 1,
                limit=PAGE,
            )
            ended = not events and jobs.is_terminal(
                jobs.get(session, owner_id=owner_id, job_id=job_id).status
            )
        frames = []
        for event in events:
            frames.append((event.version, event.type, event_json(event)))
            if event.type in TERMINAL_JOB_EVENTS:
                return Page(frames, ended=True)
        return Page(frames, ended=ended, full=len(events) == PAGE)

    return read
