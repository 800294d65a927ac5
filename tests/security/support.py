"""Helpers for the security tests: API-key clients, hand-made tokens, apps with low limits."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy.orm import Session

from services.webhooks import job_ended
from tests.conftest import TEST_JWT_SECRET
from tests.helpers import AuthClient

# Webhook endpoints need WEBHOOK_ALLOWED_NETWORKS=127.0.0.0/8; nothing is ever sent here.
RECEIVER = "http://127.0.0.1:9/hook"


@dataclass
class KeyClient(AuthClient):
    """The same user as the AuthClient it came from, presenting an API key instead."""

    key: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}


def new_key(user: AuthClient, name: str = "ci") -> KeyClient:
    response = user.post("/v1/api-keys", json={"name": name})
    assert response.status_code == 201, response.json
    return KeyClient(user.client, user.email, user.tokens, key=response.json["key"])


def send(client: Any, method: str, url: str, headers: dict[str, str], body: Any = None) -> Any:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    return client.open(url, method=method, **kwargs)


def claims_for(user_id: str, **changes: Any) -> dict[str, Any]:
    """The claims our access tokens carry; a value of None leaves that claim out."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "jti": uuid.uuid4().hex,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "iss": "conveyor",
        "type": "access",
        "fresh": False,
        "role": "user",
    }
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def mint(claims: dict[str, Any], *, key: str | None = TEST_JWT_SECRET, alg: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=alg)


def one_of_everything(user: AuthClient, session: Session) -> tuple[str, dict[str, str]]:
    """Give `user` one thing of every kind the API has; returns the user's id and the
    things' ids by the names the URL map gives them. `session` writes the one thing no
    route makes (a webhook delivery, which a job's end creates) and commits it."""
    agent = user.create_agent()
    job = user.submit(agent["id"])
    document = user.post("/v1/documents", json={"title": "t", "content": f"{user.email}'s"})
    appended = user.post(
        "/v1/streams/orders/events", json={"events": [{"type": "t", "data": {"who": user.email}}]}
    )
    batch = user.post(
        "/v1/events/batch", json={"events": [{"stream": "orders-2", "type": "t", "data": {}}]}
    )
    key = user.post("/v1/api-keys", json={"name": "k"})
    endpoint = user.post("/v1/webhooks", json={"url": RECEIVER, "event_types": ["job.succeeded"]})
    made = (document, appended, batch, key, endpoint)
    assert [r.status_code for r in made] == [201, 201, 202, 201, 201], [r.json for r in made]
    owner = str(user.get("/v1/auth/me").json["id"])
    deliveries = job_ended(
        session, owner_id=uuid.UUID(owner), job_id=uuid.UUID(job["id"]), event_type="job.succeeded"
    )
    session.commit()
    return owner, {
        "agent_id": agent["id"],
        "job_id": job["id"],
        "document_id": document.json["id"],
        "receipt_id": batch.json["receipt_id"],
        "stream": "orders",
        "key_id": key.json["id"],
        "endpoint_id": endpoint.json["id"],
        "delivery_id": str(deliveries[0]),
    }
