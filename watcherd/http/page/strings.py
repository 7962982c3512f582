"""The page's words: one JSON file per language in watcherd/http/locales/, read once at import.

Adding a language is adding a file (`<two-letter code>.json`, the same keys as en.json); a key it lacks falls
back to English, and tests/test_checkout.py checks every file has every key with the same placeholders.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from typing import Any

DEFAULT = "en"


def _load() -> dict[str, dict[str, str]]:
    folder = resources.files("watcherd.http").joinpath("locales")
    loaded = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".json"):
            loaded[entry.name.removesuffix(".json")] = json.loads(entry.read_text(encoding="utf-8"))
    english = loaded[DEFAULT]
    return {code: {**english, **strings} for code, strings in loaded.items()}


CATALOG: dict[str, dict[str, str]] = _load()


class Strings:
    """One language's strings, HTML-escaped at lookup; placeholder values are escaped too, unless given as
    `Html` (markup this module's caller built itself)."""

    def __init__(self, code: str, table: Mapping[str, str]):
        self.code = code
        self._table = table
        self._escaped = {key: html.escape(value) for key, value in table.items()}

    def raw(self, key: str) -> str:
        return self._table[key]

    def __call__(self, key: str, **values: Any) -> str:
        template = self._escaped[key]
        if not values:
            return template
        return template.format(**{k: v if isinstance(v, Html) else html.escape(str(v)) for k, v in values.items()})


class Html(str):
    """A string that is already markup (escaped where it needed to be)."""


LANGUAGES: dict[str, Strings] = {code: Strings(code, table) for code, table in CATALOG.items()}


@lru_cache(maxsize=1024)
def negotiate(accept_language: str | None) -> Strings:
    """The best language the Accept-Language header asks for that we have (RFC 9110 q-values; a region falls
    back to its language: de-AT -> de), else English. Cached: browsers send a handful of distinct headers."""
    best, best_q = DEFAULT, 0.0
    for part in (accept_language or "").split(",")[:32]:
        tag, _, params = part.partition(";")
        q = 1.0
        params = params.strip().replace(" ", "")
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        code = tag.strip().lower().split("-")[0]
        if code in LANGUAGES and q > best_q:
            best, best_q = code, q
    return LANGUAGES[best]
