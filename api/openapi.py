"""Additions to the generated OpenAPI document."""

from __future__ import annotations

from typing import Any

SECURITY_SCHEMES = {
    "BearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
}


def describe_security(spec: dict[str, Any]) -> dict[str, Any]:
    """Every operation needs a bearer token unless its route says `security=[]`."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {}).update(SECURITY_SCHEMES)
    spec["security"] = [{"BearerAuth": []}]
    return spec
