"""Engine and session factory. The caller (a request or a task) owns the transaction."""

import orjson
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str, *, pool_size: int = 10, max_overflow: int | None = None, pre_ping: bool = True
) -> Engine:
    """`pre_ping` costs a round trip per checkout. The web process goes without: a request
    that meets a connection the server dropped answers 503 (problems.py) and SQLAlchemy
    then discards every connection older than the failure, so one request per process
    pays instead of every request. Workers keep it: a task that fails that way waits for
    the sweeper."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        # Fail fast instead of hanging a request when the server is gone.
        connect_args={"connect_timeout": 5},
        # JSONB values (job input and output, event data, batch results) serialized by
        # orjson: several times faster than the json module on a batch's thousand results.
        json_serializer=_dumps,
    )


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
