import pytest
from pydantic import ValidationError

from settings import (
    DEV_JWT_SECRET,
    RENAMED_VARIABLES,
    Settings,
    SettingsError,
    renamed_variables_in_use,
)

OLD_BOUND, NEW_BOUND = "LLM_MAX_ANSWER_BYTES", "LLM_MAX_CONVERSATION_BYTES"


def test_development_accepts_the_default_secret():
    assert Settings(conveyor_env="development").jwt_secret_key == DEV_JWT_SECRET


@pytest.mark.parametrize("env", ["test", "production"])
@pytest.mark.parametrize("secret", [DEV_JWT_SECRET, "short"])
def test_default_or_weak_secret_is_refused_outside_development(env, secret):
    with pytest.raises((SettingsError, ValidationError), match="JWT_SECRET_KEY"):
        Settings(conveyor_env=env, jwt_secret_key=secret)


def test_wildcard_cors_is_refused_in_production():
    with pytest.raises((SettingsError, ValidationError), match="CORS"):
        Settings(conveyor_env="production", jwt_secret_key="k" * 40, cors_origins="*")


def test_environment_is_read(monkeypatch):
    monkeypatch.setenv("CONVEYOR_ENV", "production")
    monkeypatch.setenv("JWT_SECRET_KEY", "s" * 48)
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db:5432/app")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MAX_QUEUE_DEPTH", "7")
    settings = Settings()
    assert settings.database_url == "postgresql+psycopg://u:p@db:5432/app"
    assert settings.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.max_queue_depth == 7


def test_bad_values_name_the_setting(monkeypatch):
    monkeypatch.setenv("PORT", "not-a-number")
    with pytest.raises(ValidationError, match="port"):
        Settings()


def test_an_empty_variable_counts_as_unset(monkeypatch):
    # The production compose file passes OPENAI_BASE_URL and OPENAI_API_KEY as "" when the
    # operator sets neither.
    monkeypatch.setenv("OPENAI_BASE_URL", "")
    monkeypatch.setenv("OPENAI_API_KEY", "")
    monkeypatch.setenv("WORKER_CONCURRENCY", "")
    settings = Settings()
    assert settings.openai_base_url == "https://api.openai.com/v1"
    assert settings.openai_api_key is None
    assert settings.worker_concurrency is None


@pytest.mark.parametrize("limits", ["0/minute", "100/second;0/hour", "nonsense"])
def test_a_rate_limit_that_could_never_be_met_is_refused(monkeypatch, limits):
    monkeypatch.setenv("RATE_LIMIT_DEFAULT", limits)
    with pytest.raises(ValidationError, match="rate_limit_default"):
        Settings()


@pytest.mark.parametrize("seconds", ["0", "-1", "3601", "nan"])
def test_a_body_deadline_that_serves_nobody_or_holds_for_hours_is_refused(monkeypatch, seconds):
    """0 (or less) would answer every body 408; past an hour a trickled body holds its
    admission slot about as long as it had without a deadline."""
    monkeypatch.setenv("WEB_REQUEST_BODY_TIMEOUT_S", seconds)
    with pytest.raises(ValidationError, match="web_request_body_timeout_s"):
        Settings()


def test_the_conversation_bound_is_still_read_under_its_old_name(monkeypatch):
    monkeypatch.setenv(OLD_BOUND, "100000")
    settings = Settings()
    assert settings.llm_max_conversation_bytes == 100_000
    assert settings.llm_providers()["openai"].max_conversation_bytes == 100_000
    assert renamed_variables_in_use() == {OLD_BOUND: NEW_BOUND}


def test_the_new_name_wins_over_the_old_one(monkeypatch):
    monkeypatch.setenv(OLD_BOUND, "100000")
    monkeypatch.setenv(NEW_BOUND, "200000")
    assert Settings().llm_max_conversation_bytes == 200_000
    assert renamed_variables_in_use() == {}  # the old one is ignored: nothing to warn about


def test_the_old_name_is_held_to_the_same_limits(monkeypatch):
    monkeypatch.setenv(OLD_BOUND, "1024")  # below the least it takes, 64 KiB
    with pytest.raises(ValidationError, match="greater than or equal to 65536"):
        Settings()


@pytest.mark.parametrize(
    ("environ", "in_use"),
    [
        ({}, {}),
        ({"llm_max_answer_bytes": "100000"}, {OLD_BOUND: NEW_BOUND}),  # any case, as read
        ({OLD_BOUND: ""}, {}),  # empty is unset
        ({OLD_BOUND: "100000", NEW_BOUND: ""}, {OLD_BOUND: NEW_BOUND}),
    ],
)
def test_old_names_are_found_as_settings_reads_them(environ, in_use):
    assert renamed_variables_in_use(environ) == in_use


def test_every_renamed_variable_is_still_read():
    fields = {
        name: field.validation_alias.choices  # type: ignore[union-attr]
        for name, field in Settings.model_fields.items()
        if field.validation_alias is not None
    }
    for old, new in RENAMED_VARIABLES.items():
        assert fields[new.lower()] == [new.lower(), old.lower()]


def test_a_renamed_field_still_takes_its_own_name_as_a_keyword():
    assert Settings(llm_max_conversation_bytes=70_000).llm_max_conversation_bytes == 70_000
