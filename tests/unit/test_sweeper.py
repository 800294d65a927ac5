"""The sweeper ends, re-queues or re-publishes exactly the jobs that need it."""

import datetime as dt

import pytest
from sqlalchemy import text, update

from models import Job
from services import after_commit, agents, job_sweeper, job_transitions, jobs
from services.after_commit import SendTask
from services.job_policy import JobPolicy
from tests.conftest import new_user
from tests.helpers import age, queue_wait

POLICY = JobPolicy(republish_after_s=10, grace_s=5)


@pytest.fixture(autouse=True)
def only_this_tests_jobs(session_factory):
    """The sweeper looks at every job; jobs other tests committed (the committed-database
    tests leave some) are ended inside this test's transaction, which is rolled back."""
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.status.in_(("queued", "running")))
            .values(status="cancelled", finished_at=text("now()"), lease_expires_at=None)
        )


@pytest.fixture
def published(session_factory):
    messages = []
    after_commit.install(session_factory, messages.extend)
    return messages


@pytest.fixture
def submit(session_factory):
    with session_factory.begin() as session:
        user = new_user(session)
        agent = agents.create(session, owner_id=user.id, fields={"name": "a", "provider": "echo"})

    def submit(**fields):
        with session_factory.begin() as session:
            job = jobs.submit(
                session,
                owner_id=user.id,
                agent_id=agent.id,
                input={"text": "x"},
                policy=POLICY,
                **fields,
            )
        return job.id

    return submit


def set_past(session_factory, job_id, column, seconds):
    with session_factory.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values({column: text(f"now() - interval '{seconds}s'")})
        )


def claim(session_factory, job_id):
    with session_factory.begin() as session:
        return job_transitions.claim(session, job_id=job_id, policy=POLICY)


def sweep(session_factory):
    with session_factory.begin() as session:
        return job_sweeper.sweep(session, policy=POLICY)


def job(session_factory, job_id):
    with session_factory() as session:
        return session.get(Job, job_id)


def stream_types(session_factory, job_id):
    with session_factory() as session:
        owner = session.get(Job, job_id).owner_id
        events, _ = jobs.events_page(
            session, owner_id=owner, job_id=job_id, from_version=1, limit=50, max_bytes=2**30
        )
        return [e.type for e in events]


def request_cancel(session_factory, job_id):
    with session_factory.begin() as session:
        owner = session.get(Job, job_id).owner_id
        assert jobs.cancel(session, owner_id=owner, job_id=job_id).status == "running"


def test_submit_publishes_one_run_message_with_time_limits(submit, published):
    job_id = submit(timeout_s=20)
    [message] = [m for m in published if isinstance(m, SendTask)]
    assert message == SendTask("conveyor.jobs.run", "agents", (str(job_id),))
    assert message.options == {"soft_time_limit": 25, "time_limit": 30}


def test_republishes_queued_jobs_left_alone_too_long(session_factory, submit, published):
    fresh, old = submit(), submit()
    set_past(session_factory, old, "updated_at", 60)
    published.clear()
    report = sweep(session_factory)
    assert report.republished == [old]
    assert [m.args[0] for m in published if isinstance(m, SendTask)] == [str(old)]
    # Published again just now: the next sweep leaves it alone.
    assert sweep(session_factory).republished == []
    assert fresh not in report.republished


def test_expired_lease_is_queued_again_as_a_new_attempt(session_factory, submit, published):
    job_id = submit()
    assert claim(session_factory, job_id).attempt == 1
    assert claim(session_factory, job_id) is None
    set_past(session_factory, job_id, "lease_expires_at", 1)
    assert sweep(session_factory).requeued == [job_id]
    assert job(session_factory, job_id).status == "queued"
    assert claim(session_factory, job_id).attempt == 2
    assert stream_types(session_factory, job_id) == [
        "job.queued",
        "job.started",
        "job.requeued",
        "job.started",
    ]


def test_expired_lease_on_the_last_attempt_fails_the_job(session_factory, submit):
    job_id = submit(max_attempts=1)
    assert claim(session_factory, job_id) is not None
    set_past(session_factory, job_id, "lease_expires_at", 1)
    report = sweep(session_factory)
    assert report.abandoned == [job_id] and report.requeued == []
    failed = job(session_factory, job_id)
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error == {
        "type": "transient",
        "message": "the worker running attempt 1 of 1 stopped responding",
    }
    assert stream_types(session_factory, job_id)[-1] == "job.failed"
    assert sweep(session_factory).total() == 0


def test_queued_past_its_queue_timeout_is_timed_out(session_factory, submit):
    job_id = submit(queue_timeout_s=60)
    set_past(session_factory, job_id, "queue_deadline_at", 1)
    assert claim(session_factory, job_id) is None
    assert sweep(session_factory).queue_timed_out == [job_id]
    assert job(session_factory, job_id).status == "timed_out"
    assert job(session_factory, job_id).error["type"] == "timeout"


def test_a_lost_attempt_queued_again_has_its_whole_queue_timeout_again(session_factory, submit):
    """The attempt ran past the queue deadline counted from the submit before its worker
    died. Queued again, the job waits its queue timeout anew: it had hardly waited at all."""
    job_id = submit(queue_timeout_s=60)
    assert queue_wait(session_factory, job_id) == dt.timedelta(seconds=60)
    claim(session_factory, job_id)
    age(session_factory, job_id, 120)  # claimed at once, then ran for two minutes
    set_past(session_factory, job_id, "lease_expires_at", 1)
    assert sweep(session_factory).requeued == [job_id]
    assert queue_wait(session_factory, job_id) == dt.timedelta(seconds=60)
    assert job_id not in sweep(session_factory).queue_timed_out
    assert claim(session_factory, job_id).attempt == 2


def test_a_job_the_previous_release_submitted_keeps_the_timeout_its_deadline_had(
    session_factory, submit
):
    """Submitted during a rolling deploy, by a process that does not know queue_timeout_s."""
    job_id = submit(queue_timeout_s=60)
    with session_factory.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(queue_timeout_s=None))
    claim(session_factory, job_id)
    age(session_factory, job_id, 120)
    set_past(session_factory, job_id, "lease_expires_at", 1)
    assert sweep(session_factory).requeued == [job_id]
    assert queue_wait(session_factory, job_id) == dt.timedelta(seconds=60)
    assert job(session_factory, job_id).queue_timeout_s == 60


def test_running_past_its_deadline_with_a_dead_worker_is_timed_out(session_factory, submit):
    job_id = submit()
    claim(session_factory, job_id)
    set_past(session_factory, job_id, "deadline_at", 1)
    set_past(session_factory, job_id, "lease_expires_at", 1)
    assert sweep(session_factory).run_timed_out == [job_id]
    assert job(session_factory, job_id).status == "timed_out"


def test_a_runner_that_ignores_cancel_is_ended_after_the_grace(session_factory, submit):
    job_id = submit()
    claim(session_factory, job_id)
    request_cancel(session_factory, job_id)
    assert sweep(session_factory).force_cancelled == []
    set_past(session_factory, job_id, "cancel_requested_at", POLICY.grace_s + 1)
    assert sweep(session_factory).force_cancelled == [job_id]
    assert job(session_factory, job_id).status == "cancelled"
    assert stream_types(session_factory, job_id)[-2:] == ["job.cancel_requested", "job.cancelled"]


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_a_lost_attempt_whose_cancel_was_requested_is_cancelled_at_once(
    session_factory, submit, max_attempts
):
    """It was queued again (or, on its last attempt, failed) and the cancel was lost."""
    job_id = submit(max_attempts=max_attempts)
    claim(session_factory, job_id)
    request_cancel(session_factory, job_id)
    set_past(session_factory, job_id, "lease_expires_at", 1)
    report = sweep(session_factory)
    assert report.requeued == report.abandoned == report.force_cancelled == []
    assert job(session_factory, job_id).status == "cancelled"
    assert report.cancelled_unheld == [job_id]
    assert stream_types(session_factory, job_id)[-2:] == ["job.cancel_requested", "job.cancelled"]
    assert claim(session_factory, job_id) is None


def test_a_queued_job_with_a_cancel_request_is_not_run_but_cancelled(session_factory, submit):
    """As a transient failure or a lost lease queued a job before the cancel won there."""
    job_id = submit()
    set_past(session_factory, job_id, "cancel_requested_at", 1)
    assert claim(session_factory, job_id) is None
    assert sweep(session_factory).cancelled_unheld == [job_id]
    assert job(session_factory, job_id).status == "cancelled"
    assert stream_types(session_factory, job_id) == ["job.queued", "job.cancelled"]


def test_a_delayed_retry_is_not_claimed_early(session_factory, submit):
    job_id = submit()
    taken = claim(session_factory, job_id)
    with session_factory.begin() as session:
        assert job_transitions.retry_later(
            session, taken, error={"type": "transient", "message": "x"}, delay_s=60, policy=POLICY
        )
    assert claim(session_factory, job_id) is None
    set_past(session_factory, job_id, "run_after", 1)
    assert claim(session_factory, job_id).attempt == 2


def test_republishes_only_what_the_queue_lacks(session_factory, submit, published):
    jobs_ = [submit() for _ in range(3)]
    for age_s, job_id in zip((60, 50, 40), jobs_, strict=True):
        set_past(session_factory, job_id, "updated_at", age_s)

    def republish(waiting):
        with session_factory.begin() as session:
            return job_sweeper.sweep(session, policy=POLICY, waiting_messages=waiting).republished

    # Three due jobs and three messages waiting: nothing is missing, nothing is sent.
    assert republish(3) == []
    # Two messages for three jobs: one is missing, so the oldest job is published again.
    assert republish(2) == [jobs_[0]]
    # The broker lost everything (or cannot say): every stale job is published again.
    assert set(republish(0)) == set(jobs_[1:])
