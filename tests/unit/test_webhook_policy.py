"""The delivery policy: the retry schedule with jitter, Retry-After, and its settings."""

import ipaddress

import pytest
from pydantic import ValidationError

from services.webhook_policy import DEFAULT_RETRY_SCHEDULE_S, WebhookPolicy
from settings import Settings


def test_the_default_schedule_is_svix_like():
    policy = WebhookPolicy()
    assert DEFAULT_RETRY_SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert policy.max_attempts == 8  # the first, immediate, and seven retries
    assert policy.timeout_s == 15 and policy.max_response_bytes == 64 * 1024


def test_retry_delays_follow_the_schedule_with_jitter():
    policy = WebhookPolicy(retry_schedule_s=(10.0, 100.0), jitter=0.2)
    firsts = {policy.retry_delay_s(1) for _ in range(200)}
    assert all(8.0 <= d <= 12.0 for d in firsts) and len(firsts) > 100  # spread, not fixed
    assert all(80.0 <= policy.retry_delay_s(2) <= 120.0 for _ in range(50))
    assert policy.retry_delay_s(3) is None  # three attempts made: the schedule is spent


def test_retry_after_wins_when_longer_and_is_capped():
    policy = WebhookPolicy(retry_schedule_s=(10.0,), jitter=0.0, max_retry_after_s=3600)
    assert policy.retry_delay_s(1, retry_after_s=60) == 60
    assert policy.retry_delay_s(1, retry_after_s=1) == 10
    assert policy.retry_delay_s(1, retry_after_s=10**9) == 3600


def test_settings_read_the_webhook_variables(monkeypatch):
    monkeypatch.setenv("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, ::1/128")
    monkeypatch.setenv("WEBHOOK_RETRY_SCHEDULE", "0.5,1,2")
    monkeypatch.setenv("WEBHOOK_TIMEOUT_S", "2.5")
    policy = Settings().webhook_policy()
    assert policy.allowed_networks == (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    assert policy.retry_schedule_s == (0.5, 1.0, 2.0) and policy.max_attempts == 4
    assert policy.timeout_s == 2.5 and policy.lease_s == 7.5


def test_no_allowed_networks_by_default():
    assert Settings().webhook_policy().allowed_networks == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8,localhost"),
        ("WEBHOOK_RETRY_SCHEDULE", "5,-1"),
        ("WEBHOOK_RETRY_SCHEDULE", "5,soon"),
        ("WEBHOOK_TIMEOUT_S", "600"),
    ],
)
def test_bad_webhook_settings_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.lower()):
        Settings()
