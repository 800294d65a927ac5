"""The sweeper re-publishes jobs whose message may be lost, and only those."""

import uuid

import pytest
from sqlalchemy import text, update

from models import Job
from services import after_commit, agents, jobs, users
from services.after_commit import SendTask
from tests.conftest import FAST_PASSWORDS

LIMITS = jobs.JobLimits(default_timeout_s=60, max_timeout_s=600, default_max_attempts=3)


@pytest.fixture
def published(session_factory):
    messages = []
    after_commit.install(session_factory, messages.extend)
    return messages


@pytest.fixture
def submit(session_factory):
    with session_factory.begin() as session:
        user = users.register(
            session,
            email=f"{uuid.uuid4().hex}@example.com",
            password="p" * 12,
            passwords=FAST_PASSWORDS,
        )
        agent = agents.create(session, owner_id=user.id, fields={"name": "a", "provider": "echo"})

    def submit(**fields):
        with session_factory.begin() as session:
            job = jobs.submit(
                session,
                owner_id=user.id,
                agent_id=agent.id,
                input={"text": "x"},
                limits=LIMITS,
                **fields,
            )
        return job.id

    return submit


def age(session_factory, job_id, column, seconds):
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values({column: text(f"now() - interval '{seconds}s'")})
        )


def claim(session_factory, job_id):
    with session_factory.begin() as session:
        return jobs.claim(session, job_id=job_id, lease_s=30)


def sweep(session_factory):
    with session_factory.begin() as session:
        return set(jobs.republish_stale(session, older_than_s=10))


def test_submit_publishes_one_run_message(submit, published):
    job_id = submit()
    assert published == [SendTask(jobs.RUN_JOB_TASK, jobs.AGENTS_QUEUE, (str(job_id),))]


def test_republishes_old_queued_and_expired_running_jobs(session_factory, submit, published):
    _fresh, old, expired, held = (submit() for _ in range(4))
    age(session_factory, old, "updated_at", 60)
    for job_id in (expired, held):
        assert claim(session_factory, job_id) is not None
    age(session_factory, expired, "lease_expires_at", 1)
    published.clear()

    assert sweep(session_factory) == {old, expired}
    assert {m.args[0] for m in published if isinstance(m, SendTask)} == {str(old), str(expired)}
    # The queued job was published again just now; the next sweep leaves it alone.
    assert old not in sweep(session_factory)


def test_expired_lease_is_claimed_as_a_new_attempt(session_factory, submit):
    job_id = submit()
    assert claim(session_factory, job_id).attempt == 1
    assert claim(session_factory, job_id) is None
    age(session_factory, job_id, "lease_expires_at", 1)
    assert claim(session_factory, job_id).attempt == 2


def test_no_attempt_beyond_max_attempts(session_factory, submit, published):
    job_id = submit(max_attempts=1)
    assert claim(session_factory, job_id) is not None
    age(session_factory, job_id, "lease_expires_at", 1)
    assert claim(session_factory, job_id) is None
    assert job_id not in sweep(session_factory)

    with session_factory.begin() as session:
        assert jobs.fail_abandoned(session) == [job_id]
        job = session.get(Job, job_id)
        assert job.status == "failed" and job.finished_at is not None
        assert job.error == {
            "type": "transient",
            "message": "the worker running attempt 1 of 1 stopped responding",
        }
        events = jobs.events(
            session, owner_id=job.owner_id, job_id=job_id, from_version=1, limit=10
        )
        assert [e.type for e in events][-1] == "job.failed"
    with session_factory.begin() as session:
        assert jobs.fail_abandoned(session) == []
