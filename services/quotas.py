"""How many of a kind of thing one user may hold at once (live API keys, webhook
endpoints), held under concurrent creates."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from models import User
from services.errors import Conflict


def check_room(
    session: Session, *, owner_id: uuid.UUID, counted: Select[Any], limit: int, refusal: str
) -> None:
    """`Conflict(refusal)` when `counted` (a count of the owner's rows) is at `limit`.

    Creations of one owner are serialized on the owner's row until the transaction ends, or
    concurrent ones would each count fewer than the limit and all insert (40 API keys
    created at once took a user to 107). FOR NO KEY UPDATE: the foreign-key checks of the
    owner's other inserts (jobs, agents) take KEY SHARE, which it does not block."""
    session.execute(select(User.id).where(User.id == owner_id).with_for_update(key_share=True))
    if (session.scalar(counted) or 0) >= limit:
        raise Conflict(refusal)
