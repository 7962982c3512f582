"""BTCPay's published Greenfield OpenAPI parts (../shared/greenfield/), merged into one document and turned into
plain JSON Schema to validate watcherd's compatible responses and webhook bodies against.

OpenAPI 3.0 is not JSON Schema: `nullable` becomes a "null" type, and an `allOf` is flattened into one object
schema (a branch's `additionalProperties: false` then applies to the union of the branches' properties, as
BTCPay means it; taken literally it would refuse the other branches' properties). Stricter than the spec in two
places BTCPay's clients rely on: a `format: decimal` string must be a decimal, an int32 timestamp an integer.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

# ../shared/greenfield beside the checkout (a worktree sits one level deeper: the first parent that has it)
SPEC_DIR = next((p / "shared" / "greenfield" for p in Path(__file__).resolve().parents
                 if (p / "shared" / "greenfield").is_dir()), Path("../shared/greenfield"))
DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"


@cache
def document() -> dict[str, Any]:
    """paths, components.schemas and components.securitySchemes of every part, merged."""
    parts = sorted(SPEC_DIR.glob("swagger.template*.json"))
    if not parts:
        raise AssertionError(f"the Greenfield OpenAPI parts are missing from {SPEC_DIR}")
    merged: dict[str, Any] = {"paths": {}, "components": {"schemas": {}, "securitySchemes": {}}}
    for part in parts:
        doc = json.loads(part.read_text())
        merged["paths"].update(doc.get("paths", {}))
        for key in ("schemas", "securitySchemes"):
            merged["components"][key].update(doc.get("components", {}).get(key, {}))
    return merged


def _resolve(node: Any, seen: tuple[str, ...] = ()) -> Any:
    if isinstance(node, list):
        return [_resolve(n, seen) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return {}
        target = _resolve(document()["components"]["schemas"][name], (*seen, name))
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _flatten({"allOf": [target], **_resolve(rest, seen)}) if rest else target
    return _flatten({k: _resolve(v, seen) for k, v in node.items()})


def _flatten(node: dict[str, Any]) -> dict[str, Any]:
    if "allOf" not in node:
        return node
    merged: dict[str, Any] = {}
    for part in [*node["allOf"], {k: v for k, v in node.items() if k != "allOf"}]:
        part = _flatten(part)
        for key, value in part.items():
            if key == "properties":
                merged.setdefault("properties", {}).update(value)
            elif key == "required":
                merged["required"] = sorted(set(merged.get("required", [])) | set(value))
            elif key == "additionalProperties":
                merged[key] = merged.get(key, True) and value
            elif key == "nullable":
                merged[key] = merged.get(key, False) or value
            else:
                merged.setdefault(key, value)
    return merged


def _to_json_schema(node: Any) -> Any:
    if isinstance(node, list):
        return [_to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _to_json_schema(v) for k, v in node.items() if k not in ("nullable", "example", "x-enumNames")}
    if out.get("type") == "number" and out.get("format") == "int32":
        out["type"] = "integer"
    if out.get("type") == "string" and out.get("format") == "decimal":
        out["pattern"] = DECIMAL
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
        if "type" not in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


def flattened(name: str) -> dict[str, Any]:
    """The named component schema with every $ref inlined and each allOf flattened, still OpenAPI 3.0."""
    return _resolve(copy.deepcopy({"$ref": f"#/components/schemas/{name}"}))


@cache
def schema(name: str) -> dict[str, Any]:
    """The named component schema as plain JSON Schema."""
    return _to_json_schema(_resolve(copy.deepcopy({"$ref": f"#/components/schemas/{name}"})))


def response_schema(path: str, method: str, status: str = "200") -> dict[str, Any]:
    """The JSON Schema of an operation's response, by the spec's path template."""
    op = document()["paths"][path][method]
    content = op["responses"][status]["content"]["application/json"]["schema"]
    return _to_json_schema(_resolve(copy.deepcopy(content)))


def validate(instance: Any, name: str | None = None, *, path: str | None = None, method: str = "get") -> None:
    """Raise jsonschema.ValidationError unless `instance` is a valid `name` (or `path`'s 200 response)."""
    target = schema(name) if name is not None else response_schema(path or "", method)
    jsonschema.validate(instance, target, cls=jsonschema.Draft202012Validator)


WEBHOOK_SCHEMAS = {
    "InvoiceCreated": "WebhookInvoiceEvent",
    "InvoiceReceivedPayment": "WebhookInvoiceReceivedPaymentEvent",
    "InvoicePaymentSettled": "WebhookInvoicePaymentSettledEvent",
    "InvoiceProcessing": "WebhookInvoiceProcessingEvent",
    "InvoiceSettled": "WebhookInvoiceSettledEvent",
    "InvoiceExpired": "WebhookInvoiceExpiredEvent",
    "InvoiceInvalid": "WebhookInvoiceInvalidEvent",
}


def validate_webhook(body: dict[str, Any]) -> None:
    validate(body, WEBHOOK_SCHEMAS[body["type"]])
