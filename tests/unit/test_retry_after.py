"""Reading `Retry-After` from the servers we call (services/retry_after.py)."""

import pytest

from services.retry_after import seconds


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        (None, None),
        ("nan", None),
        ("inf", None),
        ("1e999", None),
        ("²", None),
        ("-5", None),
        ("soon", None),
    ],
)
def test_a_number_of_seconds_is_read_strictly(value, expected):
    assert seconds(value) == expected


@pytest.mark.parametrize("value", ["99999999999999999999", "1234567890", "9" * 400])
def test_very_many_seconds_are_longer_than_any_cap_not_nothing(value):
    """Past 10 digits the header was ignored, and the next attempt came on the usual
    schedule: a receiver asking for a day's rest got one second."""
    assert seconds(value) >= 10**9
