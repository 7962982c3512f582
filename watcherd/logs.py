"""Structured logs: plain text for a terminal, JSON lines for a log pipeline.

Context travels in `extra` (chain, invoice_id, txid, event_id, lease) so it is a field in JSON, not prose to parse.
Secrets are never passed to a logger in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
import time

CONTEXT_FIELDS = ("chain", "invoice_id", "txid", "event_id", "lease")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if (value := getattr(record, field, None)) is not None:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(context)s")

    def format(self, record: logging.LogRecord) -> str:
        fields = [f"{f}={v}" for f in CONTEXT_FIELDS if (v := getattr(record, f, None)) is not None]
        record.context = (" [" + " ".join(fields) + "]") if fields else ""
        return super().format(record)


def setup(level: str = "info", fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # two lines per SQL statement at debug: they would drown watcherd's own debug lines
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
