"""Node URLs carry secrets (a provider's key in the path or query, user:password@): none of it reaches a log line,
an error or a status; credentials in Ethereum's ws_url and Monero's rpc_url are refused by the config."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from conftest import async_wait_for
from harness import eth_account_xpub
from monero.seed import Seed

from watcherd.chains.ethereum.adapter import EthereumAdapter
from watcherd.chains.rpc import post_json
from watcherd.config import load
from watcherd.exceptions import ConfigError, NodeUnavailable
from watcherd.logs import redact_url, scrub

KEY = "0123456789abcdef0123456789abcdef"  # a provider's API key, as Infura's look
XPUB = eth_account_xpub()  # a fresh operator key
HEAD = '[store]\npath = "w.sqlite3"\n[api]\ntoken = "tok-0123456789abcdef"\n'


def write(tmp_path: Path, chains: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(HEAD + chains)
    return path


def problems(path: Path) -> dict[str, str]:
    with pytest.raises(ConfigError) as error:
        load(path)
    return {key: message for _, key, message in error.value.problems}


def eth_chain(ws_url_line: str) -> str:
    return f'[chains.eth]\nkind = "ethereum"\n{ws_url_line}\nchain_id = 1\nxpub = "{XPUB}"\n'


@pytest.mark.parametrize(("url", "shown"), [
    (f"wss://mainnet.infura.io/ws/v3/{KEY}", "wss://mainnet.infura.io/..."),
    (f"wss://eth-mainnet.g.alchemy.com/v2/{KEY}", "wss://eth-mainnet.g.alchemy.com/..."),
    (f"https://name.quiknode.pro/{KEY}/", "https://name.quiknode.pro/..."),
    (f"https://rpc.example/?apikey={KEY}", "https://rpc.example/..."),
    (f"http://watcherd:{KEY}@127.0.0.1:8332", "http://127.0.0.1:8332"),
    ("http://127.0.0.1:8332", "http://127.0.0.1:8332"),
    ("ws://[::1]:8546/", "ws://[::1]:8546"),
    ("http://127.0.0.1:99999/x", "(an invalid URL)"),
])
def test_a_url_is_shown_as_scheme_host_and_port_only(url, shown):
    """Path, query and userinfo are where providers and operators put secrets: none is shown, and "/..." says
    something was left out."""
    assert redact_url(url) == shown


def test_an_error_quoting_the_url_is_scrubbed():
    """aiohttp's handshake errors quote the URL they were given (url='wss://.../v3/<key>'): the message keeps
    what happened and loses the key, in the URL as given or as the library rewrote it."""
    url = f"wss://mainnet.infura.io/ws/v3/{KEY}"
    quoted = f"401, message='Invalid response status', url='{url}'"
    assert scrub(quoted, url) == "401, message='Invalid response status', url='wss://mainnet.infura.io/...'"
    assert KEY not in scrub(f"url=wss://mainnet.infura.io:443/ws/v3/{KEY}", url)
    assert KEY not in scrub(f"GET /?apikey={KEY} failed", f"https://rpc.example/?apikey={KEY}")


@pytest.fixture
async def refusing_node() -> str:
    """A 'provider' on loopback that refuses every websocket upgrade with 401, as one does for a revoked key:
    aiohttp's error then quotes the whole URL."""
    async def refuse(request: web.Request) -> web.Response:
        return web.Response(status=401, text="invalid project id")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()


async def test_a_provider_key_in_ws_url_reaches_no_log_line(tmp_path, refusing_node, caplog):
    """The chain's connect failure is logged with the node's host and port and the reason (HTTP 401), never the
    key in the URL's path or query; the node's description (the 'answers' line) carries none either."""
    caplog.set_level(logging.DEBUG)
    url = f"{refusing_node}/ws/v3/{KEY}?token=q-{KEY}"
    config = load(write(tmp_path, eth_chain(f'ws_url = "{url}"'))).chains["eth"]
    adapter = EthereumAdapter(config)
    assert KEY not in adapter.describe_node() and refusing_node in adapter.describe_node()
    task = asyncio.create_task(adapter.run(None))  # type: ignore[arg-type] # the connection fails before any sink
    try:
        await async_wait_for(lambda: any("retries in" in r.getMessage() for r in caplog.records), 10,
                             "the connect failure logged")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await adapter.close()
    failure = next(r.getMessage() for r in caplog.records if "retries in" in r.getMessage())
    assert f"{refusing_node}/... unreachable" in failure and "401" in failure, failure
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert KEY not in logged, logged


async def test_a_node_rpc_failure_names_no_secret_of_its_url():
    """Bitcoin's and Monero's JSON-RPC: an unreachable node's error shows the host and port, not the path
    (a wallet name, a proxy's token) or the query."""
    async with aiohttp.ClientSession() as session:
        with pytest.raises(NodeUnavailable) as error:
            await post_json(session, f"http://127.0.0.1:9/{KEY}/json_rpc?key={KEY}", {}, "get_info")
    assert "http://127.0.0.1:9/... unreachable" in str(error.value) and KEY not in str(error.value)


def test_credentials_in_ws_url_are_refused_and_the_url_may_come_from_a_file(tmp_path):
    """user:password@ in ws_url is refused with the way out (a key in the path, ws_url_file); the whole URL may
    come from a 0600 file, read as any secret (no warning, no second problem)."""
    found = problems(write(tmp_path, eth_chain(f'ws_url = "wss://user:{KEY}@node.example/ws"')))
    assert found["chains.eth.ws_url"].startswith("must not contain credentials (user:password@)")
    assert "ws_url_file" in found["chains.eth.ws_url"] and KEY not in repr(found)

    secret = tmp_path / "eth-ws-url"
    secret.write_text(f"wss://mainnet.infura.io/ws/v3/{KEY}\n")
    secret.chmod(0o600)
    loaded = load(write(tmp_path, eth_chain('ws_url_file = "eth-ws-url"')))
    assert loaded.chains["eth"].ws_url == f"wss://mainnet.infura.io/ws/v3/{KEY}" and loaded.warnings == ()
    assert KEY not in repr(loaded)
    secret.write_text(f"wss://user:{KEY}@node.example/ws\n")
    assert set(problems(write(tmp_path, eth_chain('ws_url_file = "eth-ws-url"')))) == {"chains.eth.ws_url_file"}


def test_credentials_in_monero_rpc_url_are_refused_pointing_to_rpc_user(tmp_path):
    """monerod's --rpc-login credentials go in rpc_user + rpc_password(_file), never in the URL."""
    wallet = Seed()
    chain = (f'[chains.xmr]\nkind = "monero"\nnetwork = "mainnet"\nrpc_url = "http://watcherd:{KEY}@127.0.0.1:18081"\n'
             f'primary_address = "{wallet.public_address()}"\nview_key = "{wallet.secret_view_key()}"\n')
    found = problems(write(tmp_path, chain))
    assert found == {"chains.xmr.rpc_url": "must not contain credentials (user:password@); use rpc_user + "
                                           "rpc_password(_file)"}
