"""Engine and session factory. The caller (a request or a task) owns the transaction."""

import functools
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import psycopg
from sqlalchemy import Connection, Dialect, Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import PoolProxiedConnection


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_overflow: int | None = None,
    statement_timeout_ms: int = 0,
) -> Engine:
    """No `pool_pre_ping`: it costs a round trip per checkout. A request that meets a
    connection the server dropped answers 503 (problems.py) and SQLAlchemy then discards
    every connection older than the failure, so one request per process pays instead of
    every request. A job's transactions reconnect once by themselves
    (services/job_units.in_transaction); another task that fails that way is re-run by
    its sweeper."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_recycle=1800,
        # Fail fast instead of hanging a request when the server is gone (or, with
        # `statement_timeout_ms`, when a statement waits too long for it).
        connect_args={
            "connect_timeout": 5,
            **(
                {"options": f"-c statement_timeout={statement_timeout_ms}"}
                if statement_timeout_ms
                else {}
            ),
        },
        # JSONB values (job input and output, event data, batch results) serialized by
        # orjson: several times faster than the json module on a batch's thousand results.
        # Read back by orjson too (on the driver's connections as well): what it cannot read
        # (an integer beyond 64 bits, a number beyond a double) orjson could not have
        # written, nor could the API's request parsing (api/json_provider.py) have let in.
        json_serializer=_dumps,
        json_deserializer=orjson.loads,
    )


def _dumps(value: object) -> str:
    return orjson.dumps(value).decode()


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class OneStatement:
    """The unit of work of a request that makes exactly one statement, without an ORM
    session: a pooled connection switched to autocommit for the statement and given back
    when the request ends, and the work deferred until then (`info`, as a session's).

    A job read through a Session spent more CPU in the session's and the engine's
    bookkeeping (checkout events, transaction objects, isolation-level switching and
    resetting) than in the driver's round trip. `commit` hands `info` to `on_commit`, which
    publishes what services deferred, as a session's after_commit event would."""

    __slots__ = ("_engine", "_on_commit", "_pooled", "info")

    def __init__(self, engine: Engine, on_commit: Callable[[dict[str, Any]], None]) -> None:
        self.info: dict[str, Any] = {}
        self._engine = engine
        self._on_commit = on_commit
        self._pooled: PoolProxiedConnection | None = None

    def pooled(self) -> PoolProxiedConnection:
        """The checked-out connection, in autocommit; failures come out as SQLAlchemy's
        (an OperationalError answers 503), as they would from a session."""
        if self._pooled is None:
            try:
                pooled = self._engine.raw_connection()
            except psycopg.Error as error:  # no connection could be made
                raise DBAPIError.instance(None, None, error, psycopg.Error) from error
            try:
                self.driver_of(pooled).autocommit = True
            except psycopg.Error as error:
                pooled.invalidate(error)  # discards it and gives its place in the pool back
                raise DBAPIError.instance(
                    None, None, error, psycopg.Error, connection_invalidated=True
                ) from error
            self._pooled = pooled
        return self._pooled

    @staticmethod
    def driver_of(pooled: PoolProxiedConnection) -> psycopg.Connection[Any]:
        return pooled.driver_connection  # type: ignore[return-value]

    @property
    def dialect(self) -> Dialect:
        return self._engine.dialect

    def invalidate(self, exception: BaseException | None = None) -> None:
        """Discard the connection found dead, and have the pool replace every connection
        as old as it at its next checkout: after a database restart they are all dead, and
        a caller that tries once more (a job's claim and end) must not meet another. This
        is what SQLAlchemy's own Connection does on a disconnect (`Pool._invalidate`)."""
        if self._pooled is not None:
            self._engine.pool._invalidate(self._pooled, exception)
            self._pooled = None

    def commit(self) -> None:
        self._release()
        info, self.info = self.info, {}
        if info:
            self._on_commit(info)

    def rollback(self) -> None:
        self.info.clear()
        self._release()

    def close(self) -> None:
        self.rollback()

    def _release(self) -> None:
        pooled, self._pooled = self._pooled, None
        if pooled is not None:
            try:
                self.driver_of(pooled).autocommit = False  # transactional again for the pool
            except psycopg.Error as error:
                pooled.invalidate(error)  # discards it and gives its place in the pool back
            else:
                pooled.close()


# What services that make one statement accept: a session, or a request's session-less unit.
UnitOfWork = Session | OneStatement


# Where a pooled connection keeps its cursors (statement -> cursor): in the pool's `info`
# of the DBAPI connection, which SQLAlchemy clears when it replaces that connection (after
# an invalidation, a recycle or a pool-wide invalidation), so a cursor never outlives it.
_CURSORS = "conveyor.cursors"


def fetch_one_on_driver(
    session: UnitOfWork, statement: str, params: Mapping[str, Any]
) -> tuple[Any, ...] | None:
    """The first row of `statement` (psycopg's parameter style), run on the driver
    connection under the session's, in its transaction if it has one (`_execute`)."""
    row: tuple[Any, ...] | None = _execute(session, statement, params).fetchone()
    return row


def fetch_all_on_driver(
    session: UnitOfWork, statement: str, params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """Every row of `statement`, as `fetch_one_on_driver` runs it."""
    rows: list[tuple[Any, ...]] = _execute(session, statement, params).fetchall()
    return rows


def _execute(session: UnitOfWork, statement: str, params: Mapping[str, Any]) -> Any:
    """Run `statement` on the driver connection under the session's, on that connection's
    own cursor for the statement; the cursor, rows as tuples. Callers take its rows at once
    (`fetch_*_on_driver`): the next run of the statement on the connection reuses it.

    For the hottest statements (a job's read and submit): SQLAlchemy's execution layer,
    even for a string it does not compile (`exec_driver_sql`), builds the result's metadata
    from the cursor description on every call, which was 0.075 ms of a 0.55 ms job read
    in-process. A cursor made per call costs its set-up and a new adapter context, which
    forgets the dumpers and loaders it had looked up; one per statement per connection
    keeps them (a connection serves one thread at a time, as the pool hands it out).
    Errors still come out as SQLAlchemy's (problems.py answers 503 for an
    OperationalError), and a connection found dead is dropped from the pool with every
    connection as old as it, as SQLAlchemy's own statements do."""
    invalidate: Callable[[BaseException], None]
    if isinstance(session, OneStatement):
        pooled, dialect, invalidate = session.pooled(), session.dialect, session.invalidate
    else:
        connection = session.connection()
        pooled = connection.connection
        dialect, invalidate = connection.dialect, functools.partial(_drop_older, connection)
    driver = OneStatement.driver_of(pooled)
    cursors: dict[str, psycopg.Cursor[Any]] | None = pooled.info.get(_CURSORS)
    if cursors is None:
        cursors = pooled.info[_CURSORS] = {}
    cursor = cursors.get(statement)
    if cursor is None:
        cursor = cursors[statement] = driver.cursor()
    try:
        return cursor.execute(statement, params)
    except psycopg.Error as error:
        dead = dialect.is_disconnect(error, driver, None)  # type: ignore[arg-type]
        if dead:
            invalidate(error)
        raise DBAPIError.instance(
            statement, params, error, psycopg.Error, connection_invalidated=dead
        ) from error


def _drop_older(connection: Connection, error: BaseException) -> None:
    """Discard a session's connection found dead, and every pooled one as old as it."""
    connection.engine.pool._invalidate(connection.connection, error, _checkin=False)
    connection.invalidate(error)
