"""`conveyor create-user`: the operator's way to an account when registration is off, and
the only way to an admin. Run as the real command on the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from typing import Any

import jwt
import psycopg
import pytest

import cli

PASSWORD = "correct horse battery staple"


def _create_user(database_url: str, *args: str, stdin: str | None = None) -> Any:
    return subprocess.run(
        [sys.executable, "cli.py", "create-user", *args],
        cwd=cli.ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _email() -> str:
    return f"ops-{uuid.uuid4().hex[:8]}@example.com"


def _role_after_login(client: Any, email: str) -> str:
    login = client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert login.status_code == 200, login.json
    claims = jwt.decode(login.json["access_token"], options={"verify_signature": False})
    role: str = claims["role"]
    return role


def _accounts(database_url: str, email: str) -> int:
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT count(*) FROM users WHERE email = %s", (email.lower(),))
        count: int = row.fetchone()[0]  # type: ignore[index]
        return count


def test_an_account_made_while_registration_is_off_logs_in(database_url, app_with):
    client = app_with(registration_enabled=False).test_client()
    email = _email()
    refused = client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert refused.status_code == 403
    done = _create_user(database_url, email.upper(), "--password-stdin", stdin=PASSWORD + "\n")
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert (made["email"], made["role"]) == (email, "user")
    assert uuid.UUID(made["id"])
    assert _role_after_login(client, email) == "user"


def test_admin_makes_an_admin(database_url, app_with):
    email = _email()
    done = _create_user(database_url, email, "--admin", "--password-stdin", stdin=PASSWORD)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["role"] == "admin"
    assert _role_after_login(app_with().test_client(), email) == "admin"


@pytest.mark.parametrize(
    ("email", "password", "said"),
    [
        ("short@example.com", "too short", "password: String should have at least 12"),
        ("not an email", PASSWORD, "email: must be an email address"),
    ],
)
def test_what_register_refuses_is_refused_and_makes_nothing(database_url, email, password, said):
    done = _create_user(database_url, email, "--password-stdin", stdin=password)
    assert done.returncode == 1
    assert said in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert _accounts(database_url, email) == 0


def test_a_taken_email_is_refused_and_keeps_its_account(database_url, app_with):
    email = _email()
    assert _create_user(database_url, email, "--password-stdin", stdin=PASSWORD).returncode == 0
    again = _create_user(database_url, email, "--admin", "--password-stdin", stdin="other " * 3)
    assert again.returncode == 1
    assert "already exists" in again.stderr and "Traceback" not in again.stderr
    assert _accounts(database_url, email) == 1
    assert _role_after_login(app_with().test_client(), email) == "user"


def test_without_a_password_it_says_how_to_give_one(database_url):
    email = _email()
    done = _create_user(database_url, email)  # stdin is no terminal and no flag was given
    assert done.returncode == 1
    assert "--password-stdin" in done.stderr and "Traceback" not in done.stderr
    assert _accounts(database_url, email) == 0
