"""The published OpenAPI document matches the routes, and the live daemon honours it under fuzzing: the native
API with its own document, the Greenfield API with BTCPay's published parts."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from greenfield_spec import SPEC_DIR, flattened
from harness import TOKEN, Daemon, chain_table

from watcherd.http import greenfield, openapi
from watcherd.http.api import make_app

ST = Path(sys.executable).parent / "st"


def test_document_lists_exactly_the_routes() -> None:
    """Every route the app serves is documented (the API and the payment page's routes an integrator may embed),
    and nothing documented is missing from the app."""
    unused = SimpleNamespace(invoice_jsons=None)  # routes only: nothing is served
    app = make_app(unused, "t" * 16, None)  # type: ignore[arg-type]
    # the page's stylesheet and script under content-hashed names: the page's own, not an interface
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and r.resource.canonical != "/i/assets/{name}"}
    documented = {(m, path) for path, item in openapi.document()["paths"].items() for m in item}
    assert served == documented
    assert {("get", "/i/{invoice_id}/status"), ("get", "/i/{invoice_id}/qr/{method}.svg")} <= documented


def test_live_daemon_never_answers_5xx_and_every_error_has_the_documented_shape(tmp_path, bsv_node) -> None:
    """schemathesis generates requests from the document (valid and invalid ones) against the real daemon: no
    server error, every response (4xx included) conforms to its documented schema and status code. The payment
    page's routes are fuzzed on an invoice that exists (cancelled, so that its live stream ends at once), so their
    200 answers (HTML, the public JSON, the SSE stream, the QR code) are checked, not only their 404."""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1)).start()
    try:
        invoice = daemon.api("POST", "/v1/invoices", {"chain": "btc", "amount": "0.001"})
        daemon.api("POST", f"/v1/invoices/{invoice['id']}/cancel")
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon.port}/openapi.json", timeout=10) as response:
            doc = json.loads(response.read())
        for path, item in doc["paths"].items():
            for operation in item.values():
                for parameter in operation.get("parameters", []):
                    if path.startswith("/i/") and parameter["name"] == "invoice_id":
                        parameter["schema"] = {"type": "string", "enum": [invoice["id"]]}
        spec = tmp_path / "native.json"
        spec.write_text(json.dumps(doc))
        done = subprocess.run(
            [str(ST), "run", str(spec), "--url", f"http://127.0.0.1:{daemon.port}", "--header",
             f"Authorization: Bearer {TOKEN}", "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
             "--max-examples", "40", "--seed", "1", "--no-color", "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # it keeps a .schemathesis/ folder
        )
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0


GF_KEY = "gf-fuzz-key-0123456789abcdef"
GF_STORE = "shop-fuzz"
GREENFIELD = f"""[greenfield]
store_id = "{GF_STORE}"
api_key = "{GF_KEY}"
[rates]
sources = []
currencies = ["USD"]
[rates.fixed]
BTC_USD = "50000"
"""


def greenfield_served() -> set[tuple[str, str]]:
    """(method, path) of every Greenfield route watcherd serves, as the spec writes the path."""
    unused = SimpleNamespace()  # routes only: nothing is served
    app = greenfield.make_app(unused, None, None)  # type: ignore[arg-type]
    return {(r.method.lower(), "/api/v1" + r.resource.canonical) for r in app.router.routes()
            if r.method != "HEAD" and not r.resource.canonical.endswith("/")}


def greenfield_document(pinned: dict[str, str]) -> dict[str, Any]:
    """BTCPay's parts merged into one OpenAPI document, with only the operations watcherd serves and the schemas
    flattened as greenfield_spec reads them. Two additions, both what BTCPay itself does: every operation may
    answer 422 with ValidationProblemDetails (BTCPay's validation errors on every route; the parts leave it out,
    and GET invoices' `default` says ProblemDetails), and the path parameters `pinned` (name -> value) take that
    value, so that requests reach a store, invoice, webhook and delivery that exist instead of stopping at
    403/404."""
    doc = json.loads((SPEC_DIR / "swagger.template.json").read_text())
    doc["paths"] = {}
    served = greenfield_served()
    for part in sorted(SPEC_DIR.glob("swagger.template.*.json")):
        data = json.loads(part.read_text())
        for kind, entries in data.get("components", {}).items():
            doc["components"].setdefault(kind, {}).update(entries)
        for path, item in data.get("paths", {}).items():
            kept = {method: op for method, op in item.items() if (method, path) in served}
            if kept:
                for op in kept.values():
                    op["responses"].setdefault("422", {"description": "invalid request", "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ValidationProblemDetails"}}}})
                doc["paths"][path] = {**kept, **({"parameters": item["parameters"]} if "parameters" in item else {})}
    doc["components"]["schemas"] = {name: flattened(name) for name in doc["components"]["schemas"]}
    parameters = doc["components"]["parameters"]
    parameters["PaymentMethodId"] = {"name": "paymentMethodId", "in": "path", "required": True,
                                     "schema": {"type": "string"}}  # referred to, not defined in the parts
    for name, value in pinned.items():
        parameters[name]["schema"] = {"type": "string", "enum": [value]}
    return doc


def greenfield_call(daemon: Daemon, method: str, path: str, body: Any = None) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.port}/api/v1{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Authorization": f"token {GF_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_greenfield_document_lists_only_served_operations() -> None:
    """The fuzzed document holds every Greenfield operation watcherd serves that BTCPay's parts describe, and
    nothing it does not serve (which would only ever answer 404 or 405)."""
    doc = greenfield_document({})
    documented = {(m, path) for path, item in doc["paths"].items() for m in item if m != "parameters"}
    assert documented <= greenfield_served()
    assert {("post", "/api/v1/stores/{storeId}/invoices"), ("get", "/api/v1/stores/{storeId}/invoices"),
            ("post", "/api/v1/invoices/{invoiceId}/status"), ("put", "/api/v1/webhooks/{webhookId}")} <= documented


def test_live_greenfield_api_never_answers_5xx_and_conforms_to_btcpays_spec(tmp_path, bsv_node) -> None:
    """schemathesis generates requests from BTCPay's own Greenfield parts (valid and invalid ones) against the
    real daemon: no server error, and every response whose status the spec documents has its schema and content
    type. (Status codes are not checked: the parts document few of the ones BTCPay answers.)"""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1), extra=GREENFIELD).start()
    try:
        hook = greenfield_call(daemon, "POST", f"/stores/{GF_STORE}/webhooks", {"url": "https://billing.example/h"})
        invoice = greenfield_call(daemon, "POST", f"/stores/{GF_STORE}/invoices", {"amount": "5", "currency": "USD"})
        delivery = greenfield_call(daemon, "GET", f"/webhooks/{hook['id']}/deliveries")[0]
        spec = tmp_path / "greenfield.json"
        spec.write_text(json.dumps(greenfield_document({
            "StoreId": GF_STORE, "InvoiceId": invoice["id"], "WebhookId": hook["id"], "DeliveryId": delivery["id"],
            "PaymentMethodId": "BTC-CHAIN"})))
        done = subprocess.run(
            [str(ST), "run", str(spec), "--url", f"http://127.0.0.1:{daemon.port}", "--header",
             f"Authorization: token {GF_KEY}", "--checks",
             "not_a_server_error,content_type_conformance,response_schema_conformance",
             "--max-examples", "25", "--seed", "1", "--no-color", "--workers", "1"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path,
        )
        assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0
