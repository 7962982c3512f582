"""Reading TOML tables: typed getters that record problems instead of raising, for the core tables and every
chain kind's table alike; and the checks more than one table needs (listen addresses, URLs, ZMQ endpoints,
the keys every chain table has).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

from watcherd.config.private import WATCH_ONLY, private_material
from watcherd.config.testvectors import is_test_network, public_test_vector


class Context:
    """What every table reader shares: the file, the problems found so far, the keys already refused, and the
    warnings (what works but should not stay so: `check-config` prints them, `run` logs them)."""

    def __init__(self, path: Path):
        self.path = path
        self.problems: list[tuple[str, str, str]] = []
        self.warnings: list[tuple[str, str, str]] = []
        self.refused: set[str] = set()

    def problem(self, key: str, message: str) -> None:
        self.problems.append((str(self.path), key, message))

    def warn(self, key: str, message: str) -> None:
        self.warnings.append((str(self.path), key, message))

    def refuse(self, key: str, message: str) -> None:
        self.refused.add(key)
        self.problem(key, message)

    def resolve(self, value: str) -> Path:
        """Relative paths mean relative to the config file, not to wherever the daemon was started."""
        candidate = Path(value)
        return candidate if candidate.is_absolute() else self.path.parent / candidate


_ABSENT = object()
_REFUSED = object()
# The example config's secrets start so ("CHANGE-ME-..."): a daemon left on them opens to whoever read the example.
_PLACEHOLDER = re.compile(r"change[-_]?me", re.IGNORECASE)


class Table:
    """One TOML table being read.

    A getter that meets a bad value records the problem and returns a placeholder of the right type, so the
    parsers stay straight-line code; load() raises before any placeholder can escape. A key the private
    material scan refused reads as a placeholder without a second problem.
    """

    def __init__(self, ctx: Context, key: str, data: dict[str, object]):
        self.ctx = ctx
        self.key = key
        self.data = data
        self.known: set[str] = set()
        self._problems_before = len(ctx.problems)

    def dotted(self, name: str) -> str:
        return f"{self.key}.{name}" if self.key else name

    def problem(self, name: str, message: str) -> None:
        self.ctx.problem(self.dotted(name), message)

    def warn(self, name: str, message: str) -> None:
        self.ctx.warn(self.dotted(name), message)

    def present(self, name: str) -> bool:
        self.known.add(name)
        return name in self.data

    def _raw(self, name: str, required: bool = False) -> object:
        self.known.add(name)
        if self.dotted(name) in self.ctx.refused:
            return _REFUSED
        if name not in self.data:
            if required:
                self.problem(name, "is required")
            return _ABSENT
        return self.data[name]

    def raw(self, name: str) -> object | None:
        """The value as TOML parsed it, for a parser that judges its shape itself; None: absent or refused."""
        value = self._raw(name)
        # TOML has no null, so None cannot be a value from the file.
        return None if value is _ABSENT or value is _REFUSED else value

    def text(self, name: str, default: str | None = None) -> str:
        """A string; required unless it has a default."""
        value = self.optional_text(name, required=default is None)
        return value if value is not None else (default or "")

    def optional_text(self, name: str, required: bool = False) -> str | None:
        value = self._raw(name, required)
        if value is _ABSENT or value is _REFUSED:
            return None
        if not isinstance(value, str) or not value:
            self.problem(name, "must be a non-empty string")
            return None
        return value

    def choice(self, name: str, options: tuple[str, ...], default: str | None = None) -> str:
        value = self._raw(name, required=default is None)
        if value is _ABSENT or value is _REFUSED:
            return default or ""
        if value not in options:
            self.problem(name, f"must be one of: {', '.join(options)}")
            return ""
        assert isinstance(value, str)
        return value

    def integer(self, name: str, default: int | None, valid: Callable[[int], bool], rule: str) -> int:
        value = self.optional_integer(name, valid, rule, required=default is None)
        return value if value is not None else (default or 0)

    def optional_integer(
        self, name: str, valid: Callable[[int], bool], rule: str, required: bool = False
    ) -> int | None:
        value = self._raw(name, required)
        if value is _ABSENT or value is _REFUSED:
            return None
        # bool is an int subclass in Python, but `confirmations = true` is a mistake, not a 1.
        if not isinstance(value, int) or isinstance(value, bool) or not valid(value):
            self.problem(name, f"must be {rule}")
            return None
        return value

    def number(self, name: str, default: float, valid: Callable[[float], bool], rule: str) -> float:
        value = self._raw(name)
        if value is _ABSENT or value is _REFUSED:
            return default
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not valid(value)
        ):
            self.problem(name, f"must be {rule}")
            return default
        return value

    def path(self, name: str) -> Path:
        value = self.optional_path(name, required=True)
        return value if value is not None else Path()

    def optional_path(self, name: str, required: bool = False) -> Path | None:
        value = self.optional_text(name, required)
        return self.ctx.resolve(value) if value is not None else None

    def secret(self, name: str, required: bool = True, min_length: int = 1) -> str | None:
        """`name` inline, or `name_file` holding it (one trailing newline stripped); exactly one of them."""
        file_name = f"{name}_file"
        inline = self._raw(name)
        from_file = self._raw(file_name)
        if inline is _REFUSED or from_file is _REFUSED:
            return None
        if inline is not _ABSENT and from_file is not _ABSENT:
            self.problem(name, f"set {name} or {file_name}, not both")
            return None
        if inline is _ABSENT and from_file is _ABSENT:
            if required:
                self.problem(name, f"is required (or {file_name} naming a file that holds it)")
            return None
        if inline is not _ABSENT:
            source = name
            if not isinstance(inline, str):
                self.problem(name, "must be a string")
                return None
            value = inline
        else:
            source = file_name
            if not isinstance(from_file, str) or not from_file:
                self.problem(file_name, "must be a non-empty string (a file path)")
                return None
            read = self._read_secret_file(file_name, self.ctx.resolve(from_file))
            if read is None:
                return None
            value = read
        if _PLACEHOLDER.match(value):
            self.problem(source, "is the example's placeholder (CHANGE-ME...): set your own (a new token or secret: "
                                 "openssl rand -hex 32; a node's password: the one the node is configured with)")
            return None
        if len(value) < min_length:
            self.problem(source, f"must be at least {min_length} characters")
            return None
        vector = public_test_vector(value)
        if vector is not None and not self._on_test_network():
            self.problem(source, f"is a public test vector ({vector}): anyone can spend what is paid to it; set your "
                                 "wallet's account key (test vectors are accepted on test networks only)")
            return None
        return value

    def _on_test_network(self) -> bool:
        """This (chain) table names a network without value: `network = "regtest"`, a test EVM `chain_id`."""
        chain_id = self.data.get("chain_id")
        name = f"chain-id-{chain_id}" if isinstance(chain_id, int) else self.data.get("network")
        return isinstance(name, str) and is_test_network(name)

    def secret_key(self, name: str) -> str:
        """Which of `name` / `name_file` a secret came from, for problems found after reading it."""
        return name if name in self.data else f"{name}_file"

    def _read_secret_file(self, file_name: str, path: Path) -> str | None:
        try:
            value = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode & 0o777
        except OSError as e:
            self.problem(file_name, f"cannot read {path}: {e.strerror}")
            return None
        except UnicodeDecodeError:
            self.problem(file_name, f"{path} is not UTF-8 text")
            return None
        if mode & 0o077:  # any other account of its group, or any account at all, can read or replace the secret
            self.warn(file_name, f"{path} is open to its group or others (mode {mode:04o}): chmod 600 {path}")
        # Editors and `echo` add one trailing newline; anything else is part of the secret.
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        if not value:
            self.problem(file_name, f"{path} is empty")
            return None
        why = private_material(value)
        if why is not None:
            self.problem(file_name, f"refused: {path} holds {why.removeprefix('this is ')}; {WATCH_ONLY}")
            return None
        return value

    def table(self, name: str) -> Table:
        """A sub-table; an absent one reads as empty, so its required keys are reported by name."""
        value = self._raw(name)
        if value is _ABSENT or value is _REFUSED:
            return Table(self.ctx, self.dotted(name), {})
        if not isinstance(value, dict):
            self.problem(name, "must be a table")
            return Table(self.ctx, self.dotted(name), {})
        return Table(self.ctx, self.dotted(name), value)

    def finish(self) -> bool:
        """Report the keys nobody asked for; True when this table (and what it read) had no problems."""
        for name in self.data:
            dotted = self.dotted(name)
            if name in self.known or dotted in self.ctx.refused:
                continue
            close = difflib.get_close_matches(name, sorted(self.known), n=1, cutoff=0.75)
            self.problem(name, "unknown key" + (f" (did you mean {close[0]}?)" if close else ""))
        return len(self.ctx.problems) == self._problems_before


@dataclass(frozen=True)
class CommonChainKeys:
    """The keys every `[chains.NAME]` table has, whatever its kind; each chain's config dataclass has a field of
    the same name for each (its parser passes them on with `**asdict(common)`)."""

    confirmations: int
    underpaid_tolerance_percent: Decimal
    invoice_expiry_seconds: int
    start_height: int | None  # None: start at the node's tip on the very first run
    node_down_after_seconds: float  # a node failing (busy, unreachable) this long counts as down
    max_reorg_depth: int  # a walk-back deeper than this stops the chain instead (see chains/follow.py)


def common_chain_keys(t: Table, confirmations: int, max_reorg_depth: int) -> CommonChainKeys:
    """Read the keys every chain table has; `confirmations` and `max_reorg_depth` are the kind's defaults."""
    tolerance = t.number("underpaid_tolerance_percent", 0, lambda x: 0 <= x < 100, "a number 0 ≤ x < 100")
    return CommonChainKeys(
        confirmations=t.integer("confirmations", confirmations, lambda x: x >= 1, "an integer ≥ 1"),
        # Through str so that 0.1 in the file is Decimal("0.1"), not the float's binary expansion.
        underpaid_tolerance_percent=Decimal(str(tolerance)),
        invoice_expiry_seconds=t.integer("invoice_expiry_seconds", 900, lambda x: x >= 60, "an integer ≥ 60"),
        start_height=t.optional_integer("start_height", lambda x: x >= 0, "an integer ≥ 0"),
        node_down_after_seconds=t.number("node_down_after_seconds", 30.0, lambda x: 1 <= x <= 3600,
                                         "a number of seconds, 1 ≤ x ≤ 3600"),
        max_reorg_depth=t.integer("max_reorg_depth", max_reorg_depth, lambda x: x >= 1, "an integer ≥ 1"),
    )


ZMQ_ENDPOINT = re.compile(r"tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}|ipc://\S+")


def host_port(value: str) -> tuple[str, int] | None:
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.-]+):(\d{1,5})", value)
    if match is None:
        return None
    host, port = match[1] or match[3], int(match[2] or match[4])
    return (host, port) if 1 <= port <= 65535 else None


def is_loopback(host: str) -> bool:
    """`host` (a URL's hostname) is this machine: localhost, 127.0.0.0/8 or ::1 (IPv4-mapped too). A name that
    merely resolves there is not judged: DNS can change its answer."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def has_userinfo(value: str) -> bool:
    """The URL carries `user:password@`: credentials that would travel and show wherever the URL does."""
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.username is not None or parts.password is not None


def is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in value)
