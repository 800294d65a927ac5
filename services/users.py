"""Accounts: registration and password login."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import User
from models.users import ROLES
from services.errors import Conflict
from services.passwords import Passwords


def normalize_email(email: str) -> str:
    return email.strip().lower()


def register(
    session: Session, *, email: str, password: str, passwords: Passwords, role: str = "user"
) -> User:
    """Create a user; `Conflict` when the email is taken. The API registers only `user`s;
    an operator may make an `admin` (`conveyor create-user --admin`)."""
    if role not in ROLES:
        raise ValueError(f"no role {role!r}; roles are {', '.join(ROLES)}")
    user = User(email=normalize_email(email), password_hash=passwords.hash(password), role=role)
    try:
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise Conflict("an account with this email already exists") from None
    return user


def authenticate(
    session: Session, *, email: str, password: str, passwords: Passwords
) -> User | None:
    """The user whose email and password match, else None (never says which part was wrong)."""
    user = session.scalar(select(User).where(User.email == normalize_email(email)))
    if not passwords.verify(user.password_hash if user else None, password):
        return None
    return user


def get(session: Session, user_id: uuid.UUID) -> User | None:
    return session.get(User, user_id)
