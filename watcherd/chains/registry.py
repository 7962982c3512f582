"""Chain kinds by name, each loaded only when a config names it.

A kind is a package under `watcherd/chains/` whose `__init__` gives `parse_config(table, name)` (its
`[chains.NAME]` table -> a frozen config, or None when the table had problems) and `make_adapter(config)`.
Adding a kind is one line here.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from watcherd.core.chain import ChainAdapter

KINDS = {
    "bitcoin": "watcherd.chains.bitcoin",
    "ethereum": "watcherd.chains.ethereum",
    "monero": "watcherd.chains.monero",
}


def kind(name: str) -> ModuleType:
    return importlib.import_module(KINDS[name])


def make_adapter(config: Any) -> ChainAdapter:
    adapter: ChainAdapter = kind(config.kind).make_adapter(config)
    return adapter
