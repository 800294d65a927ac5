from __future__ import annotations

import uuid

from apiflask import APIBlueprint
from flask import Response, g

from api import job_stream, live, sse
from api.auth import current_principal, require_access_token
from api.disconnect import watcher
from api.idempotent import has_key, idempotent
from api.job_waiter import wait_until_terminal
from api.json_provider import dumps_bytes
from api.openapi import declares
from api.preconditions import check_on_create
from api.representations import event_json, job_json
from api.request_context import db, end_session, single_statement_db
from api.runtime import current_runtime, live_page_max_bytes, page_max_bytes
from api.schemas.common import PageOut
from api.schemas.jobs import EventsQuery, JobIn, JobListQuery, JobOut, WaitQuery
from api.spec_parts import CREATE_CONDITIONS
from services import event_store, event_types, jobs
from services.after_commit import job_key
from services.inputs import MAX_VERSION

bp = APIBlueprint("jobs", __name__, url_prefix="/v1/jobs", tag="Jobs")
bp.before_request(require_access_token)


@bp.post("")
@bp.input(JobIn, arg_name="body")
@idempotent
@bp.output(JobOut, status_code=202)
@bp.doc(
    summary="Submit a job; it runs in the background",
    description="With an `Idempotency-Key` header, a retry of the same request within 24 h "
    "gets the first answer again, byte for byte, and creates nothing.",
    responses=[202, 409, 412, 422, 503],
)
@declares(
    headers={202: ["Location", "Idempotent-Replayed"]},
    request_headers=["Idempotency-Key", *CREATE_CONDITIONS],
)
def submit_job(body: JobIn):  # type: ignore[no-untyped-def]
    check_on_create("/v1/jobs", "a job")
    # Without a key the submit is the request's one statement; with one, the key is stored
    # in the same transaction (api/idempotent.py).
    session = db() if has_key() else single_statement_db()
    runtime = current_runtime()
    job = jobs.submit(
        session,
        owner_id=current_principal().user_id,
        agent_id=body.agent_id,
        input=body.input.model_dump(mode="json", exclude_none=True),
        policy=runtime.job_policy,
        queue_depth=runtime.queue_depth,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        webhook_networks=runtime.webhook_policy.allowed_networks,
        metadata=body.metadata,
        timeout_s=body.timeout_s,
        queue_timeout_s=body.queue_timeout_s,
        max_attempts=body.max_attempts,
        correlation_id=g.request_id,
    )
    return _json_response(dumps_bytes(job_json(job)), 202, f"/v1/jobs/{job.id}")


def _json_response(body: bytes, status: int, location: str | None) -> Response:
    response = Response(body, status=status, mimetype="application/json")
    if location:
        response.headers["Location"] = location
    return response


@bp.post("/<uuid:job_id>/cancel")
@bp.output(JobOut)
@bp.doc(
    summary="Cancel a job: at once when queued; a running job is asked to stop",
    responses=[200, 404, 409],
)
def cancel_job(job_id: uuid.UUID):  # type: ignore[no-untyped-def]
    job = jobs.cancel(db(), owner_id=current_principal().user_id, job_id=job_id)
    return job_json(job)


@bp.post("/<uuid:job_id>/retry")
@bp.output(JobOut, status_code=202)
@bp.doc(
    summary="Run a failed, cancelled or timed-out job again",
    description="A retry is new work: into a full queue it is refused as a submit is (503 "
    "with `Retry-After`), and the job is left as it was.",
    responses=[202, 404, 409, 503],
)
@declares(headers={202: ["Location"]})
def retry_job(job_id: uuid.UUID):  # type: ignore[no-untyped-def]
    runtime = current_runtime()
    job = jobs.retry(
        db(),
        owner_id=current_principal().user_id,
        job_id=job_id,
        policy=runtime.job_policy,
        queue_depth=runtime.queue_depth,
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
        max_bytes=page_max_bytes(),
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
        job = jobs.view(single_statement_db(), owner_id=owner_id, job_id=job_id)
        end_session()  # give the connection back while we wait
        return job

    job = wait_until_terminal(current_runtime().notifier, job_id, read, query.wait, gone=watcher())
    return _json_response(dumps_bytes(job), 200, None)


@bp.get("/<uuid:job_id>/events")
@bp.input(EventsQuery, location="query", arg_name="query")
@bp.output(PageOut)
@bp.doc(
    summary="The job's events in order",
    description="Pages by `cursor` (the last page's `next_cursor`) or, the same, "
    "`from_version`. With `Accept: text/event-stream`, a live SSE stream from that version "
    "that ends after the terminal event that is the job's last (a retried job goes on past "
    "its earlier endings); it resumes after the version given in `Last-Event-ID`, which "
    "wins over the query.",
    responses=[200, 404, 503],
)
@declares(request_headers=["Last-Event-ID"], event_stream=True)
def job_events(job_id: uuid.UUID, query: EventsQuery):  # type: ignore[no-untyped-def]
    owner_id = current_principal().user_id
    if sse.wants_stream():
        return _stream_events(owner_id, job_id, from_version=query.from_version)
    rows, more = jobs.events_page(
        db(),
        owner_id=owner_id,
        job_id=job_id,
        from_version=query.from_version,
        limit=query.limit,
        max_bytes=page_max_bytes(),
    )
    next_cursor = str(rows[-1].version + 1) if more else None
    return {"items": [event_json(e) for e in rows], "next_cursor": next_cursor}


def _stream_events(owner_id: uuid.UUID, job_id: uuid.UUID, *, from_version: int) -> Response:
    """A live tail from `Last-Event-ID` when resumed, else from the query's version, as a
    stream's tail starts (it began at version 1 whatever the query said)."""
    runtime = current_runtime()
    after = sse.last_event_id(MAX_VERSION)
    jobs.get(db(), owner_id=owner_id, job_id=job_id)  # 404 before any byte is streamed
    if after:
        stream = event_types.job_stream(job_id)
        last = event_store.last_version(db(), owner_id=owner_id, stream=stream)
        sse.check_sent(after <= last)
    end_session()
    return live.open_tail(
        runtime.notifier,
        job_key(job_id),
        job_stream.job_reader(
            runtime.session_factory,
            owner_id=owner_id,
            job_id=job_id,
            max_bytes=live_page_max_bytes(),
        ),
        after=after or from_version - 1,
        max_s=runtime.settings.max_stream_s,
        send_timeout_s=runtime.settings.web_send_timeout_s,
    )
