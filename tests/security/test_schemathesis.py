"""Schemathesis against `/openapi.json`, in process (WSGI) on the test's database.

- Every operation, as Alice (token), with generated valid and invalid input: no 5xx, every
  answer conforms to the document (status, content type, headers, body), invalid input is
  refused, and an operation that declares a credential refuses requests without one.
- Every operation with an id, as Alice, aimed at Bob's real objects: never a success.
- Without Hypothesis, every operation that declares a credential answers 401 without one.

Not checked: `positive_data_acceptance` (a schema-valid request may still break a rule
only the server knows: an unknown agent, a stale cursor, a URL the SSRF guard refuses).
Every operation is run, `/metrics` too since its text format is declared. Examples per
operation stay few (EXAMPLES) so the suite stays quick; the run is marked `slow` but runs
in `make test` like everything else.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.config._checks import NegativeDataRejectionConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance

from api import create_app
from tests.conftest import FAST_PASSWORDS, Servers, create_migrated_database, drop_database
from tests.helpers import AuthClient
from tests.security.support import new_key, one_of_everything

pytestmark = pytest.mark.slow

EXAMPLES = 10
HYPOTHESIS = hypothesis_settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # no .hypothesis/ directory in the checkout
    derandomize=True,  # the same examples on every run: a failure is reproducible
    suppress_health_check=list(HealthCheck),
)

# Invalid input may also be refused for its size: a generated string past a field's
# maxLength can pass MAX_BODY_BYTES too (413), as an endless one passes gunicorn's header
# and request-line limits (431, 414). Schemathesis counts only its own list as a refusal.
_REFUSED = [*NegativeDataRejectionConfig._DEFAULT_EXPECTED_STATUSES, "413", "414", "431"]
CONFIG = SchemathesisConfig.from_dict(
    {"checks": {"negative_data_rejection": {"expected-statuses": _REFUSED}}}
)


@pytest.fixture(scope="module")
def fuzz_database(servers: Servers, worker_id: str) -> Iterator[str]:
    """A database of its own whose transactions commit. In the usual rolled-back test
    transaction, a run this long would hold every owner's feed back for its whole length
    (the feed waits for older writing transactions anywhere on the server)."""
    name = f"conveyor_fuzz_{worker_id}_{uuid.uuid4().hex[:8]}"
    url = create_migrated_database(servers.admin_database_url, name)
    yield url
    drop_database(servers.admin_database_url, name)


@pytest.fixture
def app(settings, fuzz_database: str):  # type: ignore[no-untyped-def]
    changed = {"database_url": fuzz_database, "webhook_allowed_networks": ["127.0.0.0/8"]}
    app = create_app(settings.model_copy(update=changed), passwords=FAST_PASSWORDS)
    yield app
    app.extensions["conveyor"].notifier.close()
    app.extensions["conveyor"].engine.dispose()


@pytest.fixture
def bobs(app, bob: AuthClient) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """One of everything of Bob's, by the names of the path parameters."""
    with app.extensions["conveyor"].session_factory() as session:
        return one_of_everything(bob, session)[1]


@dataclass
class Run:
    examples: dict[str, int] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def report(self, title: str) -> str:
        operations = {label.rsplit(" (", 1)[0] for label in self.examples}
        lines = [
            f"{title}: {len(operations)} operations in {len(self.examples)} runs (valid and "
            f"invalid input), {sum(self.examples.values())} examples, "
            f"{len(self.failures)} failing"
        ]
        lines += [f"--- {label}\n{failure}" for label, failure in sorted(self.failures.items())]
        return "\n".join(lines)


def fuzz(app: Any, test: Callable[[Case], None], *, path_regex: str | None = None) -> Run:
    """Run `test` on EXAMPLES cases of each operation (each generation mode), collecting
    every operation's first failure instead of stopping at one."""
    api = schemathesis.openapi.from_wsgi("/openapi.json", app, config=CONFIG)
    if path_regex:
        api = api.include(path_regex=path_regex)
    run = Run()
    for result in api.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            label = f"{operation.label} ({mode.value})"
            run.examples[label] = 0
            try:
                _examples(operation.as_strategy(generation_mode=mode), test, run, label)()
            except Unsatisfiable:
                # No parameters and no body: nothing can be made invalid.
                assert mode == GenerationMode.NEGATIVE, label
            except BaseException as error:  # Schemathesis raises exception groups
                if isinstance(error, KeyboardInterrupt | SystemExit):
                    raise
                run.failures[label] = str(error)[:3000]
    return run


def _examples(strategy: Any, test: Callable[[Case], None], run: Run, label: str) -> Any:
    @HYPOTHESIS
    @given(case=strategy)
    def one(case: Case) -> None:
        run.examples[label] += 1
        test(case)

    return one


def test_every_operation_conforms(app, alice: AuthClient) -> None:
    def check(case: Case) -> None:
        case.call_and_validate(
            headers=_headers_for(case, alice), excluded_checks=[positive_data_acceptance]
        )

    run = fuzz(app, check)
    print(run.report("schemathesis, as Alice"))
    assert not run.failures, run.report("schemathesis, as Alice")
    assert len(run.examples) >= 2 * 40


def test_no_operation_reaches_another_owners_objects(
    app, alice: AuthClient, bobs: dict[str, str]
) -> None:
    keyed = new_key(alice)

    def check(case: Case) -> None:
        names = set(case.path_parameters or {})
        assert names <= bobs.keys(), f"add Bob's {names - bobs.keys()} to the `bobs` fixture"
        case.path_parameters = {name: bobs[name] for name in names}
        who = alice if "/api-keys" in case.path or case.method == "POST" else keyed
        response = case.call(headers=who.headers)
        assert all(bobs[name] in response.request.url for name in names), response.request.url
        assert response.status_code < 500, response.text[:300]
        assert not 200 <= response.status_code < 300, response.text[:300]

    run = fuzz(app, check, path_regex=r"\{(?!stream\})")
    print(run.report("schemathesis, Alice on Bob's objects"))
    assert not run.failures, run.report("schemathesis, Alice on Bob's objects")
    assert len(run.examples) >= 2 * 20


def _headers_for(case: Case, alice: AuthClient) -> dict[str, str]:
    if case.operation.path in ("/v1/auth/logout", "/v1/auth/refresh"):
        # A login of its own, so that logging out, or a refresh token sent again after the
        # grace (a reuse, which revokes its login), does not end Alice's for the other cases.
        user = AuthClient.register(alice.client, f"out-{uuid.uuid4().hex[:8]}@example.com")
        if case.operation.path == "/v1/auth/logout":
            return user.headers
        return {"Authorization": f"Bearer {user.tokens['refresh_token']}"}
    return alice.headers


def test_no_declared_credential_no_answer(client) -> None:
    """Every operation that declares a credential answers 401 without one, with the
    `WWW-Authenticate` challenge RFC 9110 requires (it had none)."""
    spec = client.get("/openapi.json").json
    checked = 0
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            security = operation.get("security", spec.get("security"))
            if not security:
                continue
            url = path.replace("{stream}", "s")
            for name in _path_names(path) - {"stream"}:
                url = url.replace(f"{{{name}}}", str(uuid.uuid4()))
            response = client.open(url, method=method.upper())
            assert response.status_code == 401, (method, path, response.status_code)
            assert response.headers["WWW-Authenticate"] == 'Bearer realm="conveyor"', path
            checked += 1
    assert checked >= 35


def _path_names(path: str) -> set[str]:
    return {part[1:-1] for part in path.split("/") if part.startswith("{")}
