from __future__ import annotations

import uuid

from apiflask import APIBlueprint
from flask import current_app, g

from api.auth import current_principal, require_access_token
from api.job_waiter import wait_until_terminal
from api.representations import event_json, job_json
from api.request_context import db, end_session
from api.schemas.common import PageOut
from api.schemas.jobs import EventsQuery, JobIn, JobListQuery, JobOut, WaitQuery
from services import jobs

bp = APIBlueprint("jobs", __name__, url_prefix="/v1/jobs", tag="Jobs")
bp.before_request(require_access_token)


def _runtime():  # type: ignore[no-untyped-def]
    return current_app.extensions["conveyor"]


@bp.post("")
@bp.input(JobIn, arg_name="body")
@bp.output(JobOut, status_code=202)
@bp.doc(summary="Submit a job; it runs in the background", responses=[202, 422, 503])
def submit_job(body: JobIn):  # type: ignore[no-untyped-def]
    job = jobs.submit(
        db(),
        owner_id=current_principal().user_id,
        agent_id=body.agent_id,
        input=body.input.model_dump(mode="json", exclude_none=True),
        limits=_runtime().job_limits,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        metadata=body.metadata,
        timeout_s=body.timeout_s,
        max_attempts=body.max_attempts,
        correlation_id=g.request_id,
    )
    return job_json(job), 202, {"Location": f"/v1/jobs/{job.id}"}


@bp.get("")
@bp.input(JobListQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(summary="The caller's jobs, newest first, filtered by status or agent")
def list_jobs(query: JobListQuery):  # type: ignore[no-untyped-def]
    page = jobs.list_page(
        db(),
        owner_id=current_principal().user_id,
        limit=query.limit,
        cursor=query.cursor,
        status=query.status,
        agent_id=query.agent_id,
    )
    return {"items": [job_json(j) for j in page.items], "next_cursor": page.next_cursor}


@bp.get("/<uuid:job_id>")
@bp.input(WaitQuery, location="query", arg_name="query")
@bp.output(JobOut)
@bp.doc(
    summary="One job; `?wait=` holds the answer up to 30 s until the job has ended",
    responses=[200, 404],
)
def get_job(job_id: uuid.UUID, query: WaitQuery):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id

    def read():  # type: ignore[no-untyped-def]
        job = jobs.get(db(), owner_id=owner_id, job_id=job_id)
        end_session()  # give the connection back while we wait
        return job

    job = wait_until_terminal(_runtime().redis, job_id, read, query.wait)
    return job_json(job)


@bp.get("/<uuid:job_id>/events")
@bp.input(EventsQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(summary="The job's events in order", responses=[200, 404])
def job_events(job_id: uuid.UUID, query: EventsQuery):  # type: ignore[no-untyped-def]
    rows = jobs.events(
        db(),
        owner_id=current_principal().user_id,
        job_id=job_id,
        from_version=query.from_version,
        limit=query.limit + 1,
    )
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = str(rows[-1].version + 1) if more else None
    return {"items": [event_json(e) for e in rows], "next_cursor": next_cursor}
