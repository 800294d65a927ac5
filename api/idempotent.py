"""`Idempotency-Key` on creates: the first answer is stored with what it made, in the same
transaction, and a retry of the same request gets it again, byte for byte, and makes
nothing (services/idempotency.py).

Jobs, agents, documents, appends of events and batches take the header. API keys and
webhook endpoints refuse it: their answer holds a secret shown once (the key, the signing
secret) that is stored nowhere in the clear, and a stored answer would keep it in the
database for a day.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

import orjson
from flask import Response, make_response, request

from api.auth import current_principal
from api.request_context import db
from services import idempotency
from services.errors import FieldProblem, InvalidInput

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"


def has_key() -> bool:
    return HEADER in request.headers


def idempotent(view: Callable[..., Any]) -> Callable[..., Any]:
    """Answer a request that carries a key once. Place it between the route's `@bp.input`
    and `@bp.output`: the body is valid by then, and what it stores is the answer as sent."""

    @wraps(view)
    def answer_once(*args: Any, **kwargs: Any) -> Any:
        key = request.headers.get(HEADER)
        if key is None:
            return view(*args, **kwargs)
        owner_id = current_principal().user_id
        request_fingerprint = idempotency.fingerprint(
            request.method,
            request.path,
            orjson.dumps(request.get_json(), option=orjson.OPT_SORT_KEYS),
        )
        stored = idempotency.begin(
            db(), owner_id=owner_id, key=key, request_fingerprint=request_fingerprint
        )
        if stored is not None:
            return _replay(stored)
        response: Response = make_response(view(*args, **kwargs))
        idempotency.remember(
            db(),
            owner_id=owner_id,
            key=key,
            request_fingerprint=request_fingerprint,
            response=idempotency.StoredResponse(
                response.status_code,
                response.get_data(),
                response.headers.get("Location"),
                response.headers.get("ETag"),
            ),
        )
        return response

    return answer_once


def refuses_key(view: Callable[..., Any]) -> Callable[..., Any]:
    """A 422 on the header for a create whose answer must not be stored: ignoring it would
    let a client that retries believe the retry made nothing."""

    @wraps(view)
    def no_key(*args: Any, **kwargs: Any) -> Any:
        if has_key():
            raise InvalidInput(
                problems=[
                    FieldProblem(
                        HEADER,
                        "not taken here: the answer holds a secret shown once and stored "
                        "nowhere; list the collection to see whether a create went through",
                        "header",
                    )
                ]
            )
        return view(*args, **kwargs)

    return no_key


def _replay(stored: idempotency.StoredResponse) -> Response:
    replay = Response(stored.body, status=stored.status_code, mimetype="application/json")
    if stored.location:
        replay.headers["Location"] = stored.location
    if stored.etag:
        replay.headers["ETag"] = stored.etag
    replay.headers[REPLAYED] = "true"
    return replay
