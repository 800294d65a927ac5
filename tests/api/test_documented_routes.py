"""Every request the user-facing docs show (README.md's curl tour, docs/operations.md,
bench/README.md) is an operation of the OpenAPI document: a route renamed in the code, or
mistyped in a doc, fails here instead of in a reader's shell."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.helpers import ROOT

DOCS = ["README.md", "docs/operations.md", "bench/README.md"]
METHODS = "GET|POST|PUT|PATCH|DELETE"
# A curl command line (continuations joined), its method (-X) and its URL on $API.
CURL = re.compile(r"curl\b[^\n]*?\$API(/[^\s\"'?]*)")
CURL_METHOD = re.compile(r"-X\s+(" + METHODS + r")\b")
# Prose: `GET /v1/jobs/<id>`, `POST /v1/streams/<stream>/events`.
PROSE = re.compile(r"\b(" + METHODS + r") (/(?:v1/|healthz|readyz|metrics)[^\s`),;?]*)")


def documented_requests() -> list[tuple[str, str, str]]:
    """(doc, method, path) for each request a doc shows, its query left out."""
    found = []
    for doc in DOCS:
        text = (ROOT / doc).read_text().replace("\\\n", " ")
        for line in text.splitlines():
            for match in CURL.finditer(line):
                method = CURL_METHOD.search(line)
                found.append((doc, method.group(1) if method else "GET", match.group(1)))
            for method, path in PROSE.findall(line):
                found.append((doc, method, path))
    return sorted(set(found))


REQUESTS = documented_requests()


def test_the_docs_show_requests_at_all() -> None:
    """The patterns still find the tour (a reworded README must not empty this test)."""
    shown = {(method, path) for doc, method, path in REQUESTS if doc == "README.md"}
    assert ("GET", "/v1/jobs/$JOB/events") in shown
    assert ("POST", "/v1/streams/order-42/events") in shown
    assert len(REQUESTS) >= 30


@pytest.mark.parametrize(("doc", "method", "path"), REQUESTS)
def test_a_documented_request_is_an_operation_of_the_openapi_document(
    client: Any, doc: str, method: str, path: str
) -> None:
    spec = client.get("/openapi.json").json
    # `{job_id}` in the document; `$JOB`, `<id>` or `order-42` in the docs.
    operations = [
        operations
        for template, operations in spec["paths"].items()
        if re.fullmatch(re.sub(r"\{[^}/]+\}", "[^/]+", template), path)
    ]
    assert operations, f"{doc}: {path} is no path of /openapi.json"
    assert any(method.lower() in ops for ops in operations), f"{doc}: {method} {path}"
