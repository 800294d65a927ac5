"""documents.search_vector: index the NFKC form of title and content

A precomposed "é" (U+00E9) and a decomposed one ("e" + U+0301) made different lexemes, and
so did a ligature (U+FB01, "fi") or a fullwidth letter (U+FF2B, "K") and the plain
letters, so a search found a document only when it spelt those characters as it did. The search
vector function now reads `normalize(..., NFKC)` of both; queries normalise the same way
(services.documents). Stored titles and contents stay as the client wrote them.

The function keeps its name, so the generated column and its GIN index stay; only the rows
whose text is not already NFKC get a different vector, and only those are rewritten
(`SET title = title` recomputes a stored generated column). Writes to documents wait for
the migration's end (the table lock), so no row is written with the old function after the
recomputation has passed it; reads go on. Downgrade reverses both.

PostgreSQL normalizes only in a UTF8 database (both the servers we test and the embedded
one are); elsewhere the UPDATE fails and the migration changes nothing.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 16:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0004's function with each text passed through `{normal}`. The fallback for a vector over
# 1 MiB cuts the normalized content, so its bound of 100,000 characters still holds when
# NFKC lengthens a text (one character can become up to 18).
_FUNCTION = """
CREATE OR REPLACE FUNCTION conveyor_document_search_vector(title text, content text)
RETURNS tsvector LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RETURN setweight(to_tsvector('english', {title}), 'A')
        || setweight(to_tsvector('english', {content}), 'B');
EXCEPTION WHEN program_limit_exceeded THEN
    RETURN setweight(to_tsvector('english', {title}), 'A')
        || setweight(to_tsvector('english', left({content}, 100000)), 'B');
END
$$
"""
NORMALIZED = _FUNCTION.format(
    title="normalize(coalesce(title, ''), NFKC)", content="normalize(coalesce(content, ''), NFKC)"
)
ORIGINAL = _FUNCTION.format(title="coalesce(title, '')", content="coalesce(content, '')")

# Text already in NFKC has the same vector under both functions: those rows keep theirs.
_RECOMPUTE = """
UPDATE documents SET title = title
WHERE NOT (title IS NFKC NORMALIZED AND content IS NFKC NORMALIZED)
"""


def upgrade() -> None:
    _redefine(NORMALIZED)


def downgrade() -> None:
    _redefine(ORIGINAL)


def _redefine(function: str) -> None:
    # Blocks writers (not readers) until commit: a document written meanwhile by another
    # process would otherwise get the old function's vector after the UPDATE had passed.
    op.execute("LOCK TABLE documents IN SHARE ROW EXCLUSIVE MODE")
    op.execute(function)
    op.execute(_RECOMPUTE)
