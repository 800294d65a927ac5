"""The Alembic migrations: one head, no drift from the models, reversible, and the events
table's append-only guard enforced by PostgreSQL itself.

Everything runs against a scratch database of this xdist worker, dropped at the end.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import NamedTuple

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from psycopg import sql
from sqlalchemy import Table, create_engine, inspect, pool
from sqlalchemy.engine import make_url

from models import Base
from tests.conftest import Servers, alembic_config, create_migrated_database

APP_TABLES = {"users", "agents", "jobs", "events"}
RESTRICT_VIOLATION = "23001"  # the SQLSTATE the append-only trigger raises


@pytest.fixture(scope="module")
def scratch_database(servers: Servers, worker_id: str) -> Iterator[str]:
    """A freshly created database migrated to head; its SQLAlchemy URL."""
    # Unique to this run: a concurrent session must not drop it from under us.
    name = f"conveyor_migrations_{worker_id}_{uuid.uuid4().hex[:8]}"
    url = create_migrated_database(servers.admin_database_url, name)
    yield url
    with psycopg.connect(servers.admin_database_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _run(url: str, action, *args) -> None:  # type: ignore[no-untyped-def]
    """Run an alembic command on `url` through a connection, as tests and the CLI do."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            action(config, *args)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_one_head() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, f"the migration history has branched: heads {heads}"


def test_models_and_migrations_agree(scratch_database: str) -> None:
    # alembic check raises CommandError when autogenerate would write a migration.
    _run(scratch_database, command.check)


def test_check_detects_drift(scratch_database: str) -> None:
    """The drift check above can fail: a model table with no migration is reported."""
    extra = Table("drift_probe", Base.metadata)
    try:
        with pytest.raises(CommandError, match="drift_probe"):
            _run(scratch_database, command.check)
    finally:
        Base.metadata.remove(extra)
    assert "drift_probe" not in Base.metadata.tables


def test_downgrade_to_base_then_upgrade_to_head(scratch_database: str) -> None:
    assert _tables(scratch_database) >= APP_TABLES

    _run(scratch_database, command.downgrade, "base")
    assert _tables(scratch_database) & APP_TABLES == set()
    with psycopg.connect(_libpq(scratch_database)) as conn:
        functions = conn.execute(
            "SELECT 1 FROM pg_proc WHERE proname = 'conveyor_events_append_only'"
        ).fetchall()
    assert functions == [], "downgrade left the trigger function behind"

    _run(scratch_database, command.upgrade, "head")
    assert _tables(scratch_database) >= APP_TABLES
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with psycopg.connect(_libpq(scratch_database)) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger "
            "WHERE tgrelid = 'events'::regclass AND NOT tgisinternal ORDER BY tgname"
        ).fetchall()
    assert versions == [(head,)]
    assert triggers == [("events_no_truncate",), ("events_no_update_delete",)]
    # And the re-created schema still matches the models.
    _run(scratch_database, command.check)


@pytest.fixture
def stored_event(scratch_database: str) -> tuple[str, int]:
    """A user and one event inserted with plain SQL; (libpq URL, the event's position)."""
    url = _libpq(scratch_database)
    user_id = uuid.uuid4()
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, password_hash) VALUES (%s, %s, %s)",
            (user_id, f"{user_id.hex}@example.com", "not-a-real-hash"),
        )
        row = conn.execute(
            "INSERT INTO events (event_id, owner_id, stream, version, type, data) "
            "VALUES (%s, %s, %s, 1, 'test.happened', %s) RETURNING position",
            (uuid.uuid4(), user_id, f"test-{user_id.hex}", json.dumps({"n": 1})),
        ).fetchone()
    assert row is not None
    return url, row[0]


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("UPDATE events SET type = 'test.rewritten' WHERE position = %(position)s", "UPDATE"),
        ("DELETE FROM events WHERE position = %(position)s", "DELETE"),
        ("TRUNCATE events", "TRUNCATE"),
        ("TRUNCATE events CASCADE", "TRUNCATE"),
    ],
)
def test_events_refuse_changes(stored_event: tuple[str, int], statement: str, operation: str):
    url, position = stored_event
    with psycopg.connect(url) as conn:
        with pytest.raises(psycopg.errors.IntegrityError) as refused:
            conn.execute(statement, {"position": position} if "%(" in statement else None)
        assert refused.value.sqlstate == RESTRICT_VIOLATION
        assert f"{operation} is not allowed" in str(refused.value)
        conn.rollback()
        row = conn.execute(
            "SELECT type, data FROM events WHERE position = %s", (position,)
        ).fetchone()
    assert row == ("test.happened", {"n": 1})


def test_events_accept_appends(stored_event: tuple[str, int]) -> None:
    """The guard refuses changes, not inserts: the next version of the stream goes in."""
    url, position = stored_event
    with psycopg.connect(url) as conn:
        owner_id, stream = conn.execute(
            "SELECT owner_id, stream FROM events WHERE position = %s", (position,)
        ).fetchone()  # type: ignore[misc]
        (appended,) = conn.execute(
            "INSERT INTO events (event_id, owner_id, stream, version, type, data) "
            "VALUES (%s, %s, %s, 2, 'test.happened', '{}') RETURNING position",
            (uuid.uuid4(), owner_id, stream),
        ).fetchone()  # type: ignore[misc]
    assert appended > position


def test_batch_payloads_are_json_compressed_with_lz4_where_the_server_has_it(
    scratch_database: str,
) -> None:
    """0009 turns them into json; a type change resets a column's compression, so it sets
    0008's lz4 again, which the batch path's timings rely on."""
    with psycopg.connect(_libpq(scratch_database)) as conn:
        try:
            conn.execute("SET default_toast_compression = lz4")
            expected = "l"
        except psycopg.errors.InvalidParameterValue:  # a server built without lz4
            conn.rollback()
            expected = ""
        columns = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod), attcompression "
            "FROM pg_attribute WHERE attrelid = 'event_batches'::regclass "
            "AND attname IN ('events', 'results') ORDER BY attname"
        ).fetchall()
    assert columns == [("events", "json", expected), ("results", "json", expected)]


def test_0010_keeps_each_jobs_queue_timeout_from_its_deadline(scratch_database: str) -> None:
    """Existing jobs get the queue timeout their deadline was counted with; a job without
    a queue deadline has none."""
    url = _libpq(scratch_database)
    _run(scratch_database, command.downgrade, "0009")
    try:
        user_id, agent_id = uuid.uuid4(), uuid.uuid4()
        with psycopg.connect(url) as conn:
            conn.execute(
                "INSERT INTO users (id, email, password_hash) VALUES (%s, %s, %s)",
                (user_id, f"{user_id.hex}@example.com", "not-a-real-hash"),
            )
            conn.execute(
                "INSERT INTO agents (id, owner_id, name, provider) VALUES (%s, %s, 'a', 'echo')",
                (agent_id, user_id),
            )
            jobs = {}
            for wait in (dt.timedelta(seconds=90), None):  # now() is created_at here
                (jobs[wait],) = conn.execute(
                    "INSERT INTO jobs (id, owner_id, agent_id, agent_version, agent_config, "
                    "input, max_attempts, attempt_budget, timeout_s, queue_deadline_at) "
                    "VALUES (gen_random_uuid(), %s, %s, 1, '{}', '{}', 1, 1, 60, now() + %s) "
                    "RETURNING id",
                    (user_id, agent_id, wait),
                ).fetchone()  # type: ignore[misc]
    finally:
        _run(scratch_database, command.upgrade, "head")
    with psycopg.connect(url) as conn:
        kept = dict(
            conn.execute(
                "SELECT id, queue_timeout_s FROM jobs WHERE owner_id = %s", (user_id,)
            ).fetchall()
        )
    assert kept == {jobs[dt.timedelta(seconds=90)]: 90, jobs[None]: None}


DECOMPOSED_CAFE = "cafe\u0301"  # "e" + COMBINING ACUTE ACCENT
PRECOMPOSED_CAFE = "caf\u00e9"


def _insert_documents(url: str, documents: dict[str, tuple[str, str]]) -> dict[str, uuid.UUID]:
    """A user and documents (name: (title, content)) inserted with plain SQL; name: id."""
    user_id = uuid.uuid4()
    ids = {}
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO users (id, email, password_hash) VALUES (%s, %s, %s)",
            (user_id, f"{user_id.hex}@example.com", "not-a-real-hash"),
        )
        for name, (title, content) in documents.items():
            (ids[name],) = conn.execute(
                "INSERT INTO documents (id, owner_id, title, content) "
                "VALUES (gen_random_uuid(), %s, %s, %s) RETURNING id",
                (user_id, title, content),
            ).fetchone()  # type: ignore[misc]
    return ids


class SearchState(NamedTuple):
    row_version: str  # xmin: changes when the row is rewritten
    title: str
    content: str
    vector: str
    rank: float  # for the query as written, as a 0010 query ranks it


def _search_state(url: str, ids: dict[str, uuid.UUID], q: str) -> dict[str, SearchState]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, xmin::text, title, content, search_vector::text, "
            "ts_rank_cd(search_vector, websearch_to_tsquery('english', %s)) "
            "FROM documents WHERE id = ANY(%s)",
            (q, list(ids.values())),
        ).fetchall()
    by_id = {row[0]: SearchState(*row[1:]) for row in rows}
    return {name: by_id[document_id] for name, document_id in ids.items()}


def test_0012_indexes_the_nfkc_form_and_rewrites_only_rows_not_in_it(
    scratch_database: str,
) -> None:
    """Documents written before 0012 are found by either spelling after it; plain ASCII
    rows keep their vector and rank, untouched; the text stays as written; and the
    downgrade gives back exactly the vectors 0011 had."""
    url = _libpq(scratch_database)
    _run(scratch_database, command.downgrade, "0011")
    try:
        ids = _insert_documents(
            url,
            {
                "ascii": ("Kafka internals", "Logs, partitions, offsets about kafka."),
                "decomposed": ("Menu", f"The {DECOMPOSED_CAFE} on the corner, kafka"),
                # The "fi" ligature; "Kafka" in fullwidth letters.
                "ligature": ("\ufb01le formats", "\uff2b\uff41\uff46\uff4b\uff41 logs"),
            },
        )
        before = _search_state(url, ids, "kafka")
        assert before["ligature"].rank == 0  # fullwidth is not "kafka" before 0012
    finally:
        _run(scratch_database, command.upgrade, "head")
    after = _search_state(url, ids, "kafka")
    assert after["ascii"] == before["ascii"], "an ASCII row was rewritten or re-ranked"
    for name in ("decomposed", "ligature"):
        assert after[name].vector != before[name].vector, f"{name} kept its 0011 vector"
        assert after[name][1:3] == before[name][1:3], "the stored text changed"
    with psycopg.connect(url) as conn:
        found = {
            q: {
                row[0]
                for row in conn.execute(
                    "SELECT id FROM documents WHERE id = ANY(%s) AND search_vector @@ "
                    "websearch_to_tsquery('english', normalize(%s, NFKC))",
                    (list(ids.values()), q),
                )
            }
            for q in (PRECOMPOSED_CAFE, "file", "kafka")
        }
    assert found == {
        PRECOMPOSED_CAFE: {ids["decomposed"]},
        "file": {ids["ligature"]},
        "kafka": set(ids.values()),
    }

    _run(scratch_database, command.downgrade, "0011")
    try:
        reverted = _search_state(url, ids, "kafka")
        for name in ids:
            assert reverted[name][1:] == before[name][1:], f"{name} did not get 0010's back"
        assert reverted["ascii"].row_version == before["ascii"].row_version
    finally:
        _run(scratch_database, command.upgrade, "head")
