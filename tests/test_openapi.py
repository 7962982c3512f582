"""The published OpenAPI document matches the routes, and the live daemon honours it under fuzzing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from harness import TOKEN, Daemon, chain_table

from watcherd.http import openapi
from watcherd.http.api import make_app

ST = Path(sys.executable).parent / "st"


def test_document_lists_exactly_the_routes() -> None:
    """Every route the app serves is documented, and nothing documented is missing from the app."""
    unused = SimpleNamespace(invoice_jsons=None)  # routes only: nothing is served
    app = make_app(unused, "t" * 16, None)  # type: ignore[arg-type]
    # /i/: the customer's payment page (README, "Payment page"), not the billing system's API
    served = {(r.method.lower(), r.resource.canonical) for r in app.router.routes()
              if r.method != "HEAD" and not r.resource.canonical.startswith("/i/")}
    documented = {(m, path) for path, item in openapi.document()["paths"].items() for m in item}
    assert served == documented


def test_live_daemon_never_answers_5xx_and_every_error_has_the_documented_shape(tmp_path, bsv_node) -> None:
    """schemathesis generates requests from the document (valid and invalid ones) against the real daemon: no
    server error, every response (4xx included) conforms to its documented schema and status code."""
    daemon = Daemon(tmp_path / "d", chain_table("btc", bsv_node, confirmations=1)).start()
    try:
        done = subprocess.run(
            [str(ST), "run", f"http://127.0.0.1:{daemon.port}/openapi.json", "--header",
             f"Authorization: Bearer {TOKEN}", "--checks",
             "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
             "--max-examples", "40", "--seed", "1", "--no-color", "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # it keeps a .schemathesis/ folder
        )
        assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0
