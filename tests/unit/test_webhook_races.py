"""Deleting a webhook endpoint while its deliveries are written or recorded, on committed
transactions of the real PostgreSQL. A probe found both by chance under load (a foreign-key
violation that lost a job's end, and a deadlock); table and row locks make each
interleaving happen every time here."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from services import agents, jobs, webhook_delivery, webhooks
from services.job_policy import JobPolicy
from services.webhook_http import Answer
from services.webhook_policy import WebhookPolicy, parse_networks
from services.webhooks import Told
from tests.conftest import new_user
from tests.helpers import poll, waiting_for_locks

POLICY = WebhookPolicy(allowed_networks=parse_networks(["127.0.0.0/8"]), jitter=0.0)
EVENT = "job.succeeded"


@pytest.fixture
def factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def threads() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield pool


@pytest.fixture
def subscribed(factory: sessionmaker[Session]) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID]:
    """A committed user, an endpoint of theirs that hears of `EVENT`, and a job of theirs:
    (owner id, endpoint id, job id)."""
    with factory.begin() as session:
        user = new_user(session)
        endpoint = webhooks.create(
            session,
            owner_id=user.id,
            url="http://127.0.0.1:9/hook",
            event_types=[EVENT],
            description=None,
            policy=POLICY,
        )
        agent = agents.create(session, owner_id=user.id, fields={"name": "a", "provider": "echo"})
        job = jobs.submit(
            session, owner_id=user.id, agent_id=agent.id, input={"text": "x"}, policy=JobPolicy()
        )
    return user.id, endpoint.id, job.id


def test_an_endpoint_deleted_while_a_job_ends_is_left_out_of_its_deliveries(
    engine, factory, threads, subscribed
):
    """The end read who is told, then inserted a delivery for an endpoint whose deletion
    committed meanwhile: a foreign-key violation that rolled the end back (a cancel
    answered 500; a worker's finished job stayed `running` and ran again)."""
    owner_id, endpoint_id, job_id = subscribed
    with factory() as deleting, deleting.begin():
        webhooks.delete(deleting, owner_id=owner_id, endpoint_id=endpoint_id)

        def end() -> list[uuid.UUID]:
            with factory.begin() as session:
                return webhooks.job_ended(
                    session,
                    owner_id=owner_id,
                    job_id=job_id,
                    event_type=EVENT,
                    told=Told([endpoint_id], None),
                )

        ending = threads.submit(end)
        poll(lambda: waiting_for_locks(engine) == 1)  # for the uncommitted deletion
    assert ending.result(timeout=10) == []


def test_an_attempt_recorded_while_its_endpoint_is_deleted_does_not_deadlock(
    engine, factory, threads, subscribed
):
    """`record` locked the delivery, then updated the endpoint; the deletion locks the
    endpoint, then its deliveries (the cascade): each waited for the other."""
    owner_id, endpoint_id, job_id = subscribed
    with factory.begin() as session:
        (delivery_id,) = webhooks.job_ended(
            session, owner_id=owner_id, job_id=job_id, event_type=EVENT
        )
    with factory.begin() as session:
        claim = webhook_delivery.claim_due(session, delivery_id, policy=POLICY)
    assert claim is not None
    failed = Answer(status_code=500, duration_ms=3)  # a failure sets the endpoint's failing_since

    def record() -> str:
        with factory.begin() as session:
            return webhook_delivery.record(
                session, claim, failed, attempted_at=dt.datetime.now(dt.UTC), policy=POLICY
            )

    def delete() -> None:
        with factory.begin() as session:
            webhooks.delete(session, owner_id=owner_id, endpoint_id=endpoint_id)

    with factory() as blocking, blocking.begin():
        # The attempt's log row waits here, after `record` has taken its first locks.
        blocking.execute(text("LOCK TABLE webhook_attempts IN SHARE MODE"))
        recording = threads.submit(record)
        poll(lambda: waiting_for_locks(engine) == 1)
        deleting = threads.submit(delete)
        poll(lambda: waiting_for_locks(engine) == 2)
    assert recording.result(timeout=10) == "failed"  # to be retried
    deleting.result(timeout=10)
