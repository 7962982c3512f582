"""The regtest devnet that every real-node test and the demo stand on: if it fails, nothing above it holds.

Runs against the session nodes from conftest (shared: never assert absolute heights or balances) and, for the
`Devnet` directory and the CLI, against nodes of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import zmq
from bip_utils import Bip44, Bip44Changes, Bip44Coins, Bip84, Bip84Coins, Hash160, P2PKHAddr, P2WPKHAddr
from conftest import scaled, wait_for

from testkit.bitcoin_node import Node
from testkit.devnet import Devnet
from testkit.process import pid_alive

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["bsv_node", "ltc_node"])
def node(request: pytest.FixtureRequest) -> Node:
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    devnet = Devnet(tmp_path_factory.mktemp("devnet"), die_with_parent=True)
    try:
        devnet.up()
        yield devnet
    finally:
        devnet.down()


def output_to(node: Node, txid: str, script_hex: str) -> Decimal | None:
    """The amount `txid` pays to `script_hex`, read back from the node (None when it pays nothing there)."""
    tx = node.rpc("getrawtransaction", txid, True)
    amounts = [out["value"] for out in tx["vout"] if out["scriptPubKey"]["hex"] == script_hex]
    return sum(amounts, Decimal(0)) if amounts else None


# ---- one node ---------------------------------------------------------------------------------------------


def test_node_is_regtest_on_loopback_and_funded(node: Node) -> None:
    """A started node answers RPC on 127.0.0.1 only, is on regtest and has spendable coins."""
    assert node.rpc_url.startswith("http://127.0.0.1:")
    assert node.rpc("getblockchaininfo")["chain"] == "regtest"
    height, _ = node.tip()
    assert height >= 101
    assert node.balance() > 0
    if node.kind == "bsv":
        assert node.zmq_endpoint == f"tcp://127.0.0.1:{node.zmq_port}"
    else:
        assert node.zmq_endpoint is None


def test_pay_then_mine_confirms_the_payment(node: Node) -> None:
    """pay() puts a tx in the mempool at once; mine(1) extends the tip by that block and confirms it."""
    address = node.new_address()
    script = node.rpc("validateaddress", address)["scriptPubKey"]
    txid = node.pay(address, "0.5")
    assert txid in node.rpc("getrawmempool")
    height, _ = node.tip()

    (block_hash,) = node.mine(1)

    assert node.tip() == (height + 1, block_hash)
    assert txid not in node.rpc("getrawmempool")
    assert node.rpc("getrawtransaction", txid, True)["blockhash"] == block_hash
    assert output_to(node, txid, script) == Decimal("0.5")  # amounts come back as Decimal, exactly


def test_restart_keeps_chain_wallet_and_ports(node: Node) -> None:
    """restart() comes back on the same datadir and ports with the same chain and wallet."""
    node.mine(1)  # settle the mempool so the balance cannot move under us
    tip, balance, old_pid = node.tip(), node.balance(), node.pid
    ports = (node.rpc_port, node.zmq_port)

    node.restart()

    assert node.pid != old_pid
    assert (node.rpc_port, node.zmq_port) == ports
    assert node.tip() == tip
    assert node.balance() == balance
    node.pay(node.new_address(), "0.1")  # the wallet is loaded and spends again
    assert node.mine(1)


def test_invalidate_and_reconsider_move_the_tip(node: Node) -> None:
    """invalidate() takes the tip's block off the active chain; reconsider() puts it back."""
    base = node.tip()
    (block_hash,) = node.mine(1)

    node.invalidate(block_hash)
    assert node.tip() == base

    node.reconsider(block_hash)
    assert node.tip() == (base[0] + 1, block_hash)


def test_longer_branch_wins_a_reorg(node: Node) -> None:
    """The reorg recipe the daemon tests use: invalidate, mine a longer branch, reconsider the old block; the
    node stays on the longer branch (mining right after invalidate must not rebuild the invalidated block)."""
    base_height, _ = node.tip()
    (stale,) = node.mine(1)
    node.invalidate(stale)

    branch = node.mine(2)
    node.reconsider(stale)

    assert stale not in branch
    assert node.tip() == (base_height + 2, branch[-1])


def test_bump_fee_replaces_the_transaction_on_litecoind(ltc_node: Node) -> None:
    """A replaceable payment can be fee-bumped: a new txid replaces the old in the mempool and confirms."""
    original = ltc_node.pay(ltc_node.new_address(), "0.3", replaceable=True)
    assert ltc_node.rpc("getmempoolentry", original)["bip125-replaceable"] is True

    replacement = ltc_node.bump_fee(original)

    assert replacement != original
    mempool = ltc_node.rpc("getrawmempool")
    assert replacement in mempool and original not in mempool
    (block_hash,) = ltc_node.mine(1)
    assert ltc_node.rpc("getrawtransaction", replacement, True)["blockhash"] == block_hash


def test_litecoind_chain_has_mweb_active(ltc_node: Node) -> None:
    """litecoind's chain is past MWEB activation, like mainnet, and mining keeps working there."""
    assert ltc_node.rpc("getblockchaininfo")["softforks"]["mweb"]["active"] is True
    assert len(ltc_node.mine(2)) == 2


def test_bsv_node_has_no_replace_by_fee(bsv_node: Node) -> None:
    """The SV code base has no RBF: asking for it is an error, not a silently final payment."""
    with pytest.raises(ValueError):
        bsv_node.pay(bsv_node.new_address(), "0.1", replaceable=True)
    with pytest.raises(ValueError):
        bsv_node.bump_fee("00" * 32)


def test_bsv_node_publishes_rawtx_and_hashblock_over_zmq(bsv_node: Node) -> None:
    """The SV bitcoind publishes Bitcoin Core's 3-frame rawtx/hashblock messages on its one ZMQ endpoint."""
    with zmq.Context() as context:
        sub = context.socket(zmq.SUB)
        try:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RCVTIMEO, 200)
            sub.setsockopt(zmq.SUBSCRIBE, b"rawtx")
            sub.setsockopt(zmq.SUBSCRIBE, b"hashblock")
            sub.connect(bsv_node.zmq_endpoint)

            def received(topic: bytes, body_hex: set[str]) -> list[bytes] | None:
                """Drain what has arrived; the first `topic` message whose body (hex) is in `body_hex`."""
                while True:
                    try:
                        frames = sub.recv_multipart()
                    except zmq.Again:
                        return None
                    if frames[0] == topic and frames[1].hex() in body_hex:
                        return frames

            mined: set[str] = set()

            def block_announced() -> list[bytes] | None:
                # A SUB socket misses what is published before its subscription lands: mine until one arrives.
                mined.update(bsv_node.mine(1))
                return received(b"hashblock", mined)

            frames = wait_for(block_announced, 10, "a hashblock message from the SV node")
            assert len(frames) == 3 and len(frames[2]) == 4  # topic, body, little-endian sequence number

            txid = bsv_node.pay(bsv_node.new_address(), "0.2")
            raw = bsv_node.rpc("getrawtransaction", txid)
            frames = wait_for(lambda: received(b"rawtx", {raw}), 10, f"the rawtx message of {txid}")
            assert hashlib.sha256(hashlib.sha256(frames[1]).digest()).digest()[::-1].hex() == txid
        finally:
            sub.close()


# ---- the operator's keys ----------------------------------------------------------------------------------


def operator_public_key(xpub: str, address_type: str) -> bytes:
    """The public key at /0/0 (external chain, index 0) under the account key, derived as the daemon must:
    from the public key alone."""
    if address_type == "p2pkh":
        account = Bip44.FromExtendedKey(xpub, Bip44Coins.BITCOIN_TESTNET)
    else:
        account = Bip84.FromExtendedKey(xpub, Bip84Coins.BITCOIN_TESTNET)
    return account.Change(Bip44Changes.CHAIN_EXT).AddressIndex(0).PublicKey().RawCompressed().ToBytes()


def regtest_address(public_key: bytes, address_type: str) -> str:
    if address_type == "p2pkh":
        return P2PKHAddr.EncodeKey(public_key, net_ver=b"\x6f")  # testnet/regtest base58 prefix
    return P2WPKHAddr.EncodeKey(public_key, hrp="rltc")  # litecoin regtest's bech32 prefix


def test_operator_xpubs_are_public_account_keys(tmp_path: Path) -> None:
    """operator_xpubs() gives account-level PUBLIC keys, stable across calls (one seed per devnet dir)."""
    devnet = Devnet(tmp_path)
    xpubs = devnet.operator_xpubs()
    assert xpubs["btc"][0].startswith("tpub") and xpubs["btc"][1] == "p2pkh"
    assert xpubs["ltc"][0].startswith("vpub") and xpubs["ltc"][1] == "p2wpkh"
    assert Bip44.FromExtendedKey(xpubs["btc"][0], Bip44Coins.BITCOIN_TESTNET).IsPublicOnly()
    assert Bip44.FromExtendedKey(xpubs["btc"][0], Bip44Coins.BITCOIN_TESTNET).Level() == 3  # account
    assert Devnet(tmp_path).operator_xpubs() == xpubs
    assert (tmp_path / "operator-seed.hex").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("chain", ["btc", "ltc"])
def test_operator_address_is_payable(chain: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """An address derived from the operator's account xpub at /0/0 is valid on the node and can be paid."""
    node: Node = request.getfixturevalue({"btc": "bsv_node", "ltc": "ltc_node"}[chain])
    xpub, address_type = Devnet(tmp_path).operator_xpubs()[chain]
    public_key = operator_public_key(xpub, address_type)
    address = regtest_address(public_key, address_type)

    info = node.rpc("validateaddress", address)
    assert info["isvalid"] is True
    key_hash = Hash160.QuickDigest(public_key).hex()
    expected_script = f"76a914{key_hash}88ac" if address_type == "p2pkh" else f"0014{key_hash}"
    assert info["scriptPubKey"] == expected_script

    txid = node.pay(address, "0.25")
    node.mine(1)
    assert output_to(node, txid, expected_script) == Decimal("0.25")


# ---- the devnet directory and its config ------------------------------------------------------------------

CHAIN_KEYS = {
    "kind",
    "coin",
    "network",
    "rpc_url",
    "rpc_user",
    "rpc_password",
    "xpub",
    "address_type",
    "confirmations",
    "poll_interval_seconds",
}


def test_write_config_has_the_daemon_shape(devnet: Devnet, tmp_path: Path) -> None:
    """write_config() writes exactly the TOML shape the daemon's config loader reads, for running nodes."""
    path = devnet.write_config(
        tmp_path / "watcherd.toml",
        store_path=tmp_path / "store.sqlite3",
        api_port=18444,
        api_token="tok-en",
        webhook_url="http://127.0.0.1:9/hook",
        webhook_secret='se"cret',
        confirmations=3,
        poll_interval_seconds=0.25,
    )
    config = tomllib.loads(path.read_text())
    xpubs = devnet.operator_xpubs()
    btc, ltc = devnet.node("btc"), devnet.node("ltc")

    assert set(config) == {"store", "api", "webhook", "log", "chains"}
    assert config["store"] == {"path": str(tmp_path / "store.sqlite3")}
    assert config["api"] == {"listen": "127.0.0.1:18444", "token": "tok-en"}
    assert config["webhook"] == {"url": "http://127.0.0.1:9/hook", "secret": 'se"cret'}
    assert config["log"] == {"level": "info"}
    assert config["chains"] == {
        "btc": {
            "kind": "bitcoin",
            "coin": "bitcoin",
            "network": "regtest",
            "rpc_url": btc.rpc_url,
            "rpc_user": btc.rpc_user,
            "rpc_password": btc.rpc_password,
            "zmq_rawtx": btc.zmq_endpoint,
            "zmq_hashblock": btc.zmq_endpoint,
            "xpub": xpubs["btc"][0],
            "address_type": "p2pkh",
            "confirmations": 3,
            "poll_interval_seconds": 0.25,
        },
        "ltc": {
            "kind": "bitcoin",
            "coin": "litecoin",
            "network": "regtest",
            "rpc_url": ltc.rpc_url,
            "rpc_user": ltc.rpc_user,
            "rpc_password": ltc.rpc_password,
            "xpub": xpubs["ltc"][0],
            "address_type": "p2wpkh",
            "confirmations": 3,
            "poll_interval_seconds": 0.25,
        },
    }
    assert set(config["chains"]["ltc"]) == CHAIN_KEYS


def test_write_config_without_webhook_has_no_webhook_table(devnet: Devnet, tmp_path: Path) -> None:
    """No webhook URL, no [webhook] table; defaults are 2 confirmations, 0.5 s polling."""
    path = devnet.write_config(
        tmp_path / "c.toml",
        store_path=tmp_path / "s.sqlite3",
        api_port=1,
        api_token="t",
        webhook_url=None,
        webhook_secret=None,
    )
    config = tomllib.loads(path.read_text())
    assert "webhook" not in config
    assert config["chains"]["btc"]["confirmations"] == 2
    assert config["chains"]["btc"]["poll_interval_seconds"] == 0.5


def test_another_process_finds_the_running_nodes(devnet: Devnet) -> None:
    """state.json lets a separate process (a later `scripts/devnet` command) reattach to the nodes; a second
    up() leaves running nodes alone."""
    pids = {name: devnet.node(name).pid for name in ("btc", "ltc")}
    code = (
        "import sys; from testkit.devnet import Devnet; d = Devnet(sys.argv[1]); "
        "print(*(f'{n} {d.node(n).pid} {d.node(n).tip()[0]}' for n in ('btc', 'ltc')), sep='\\n')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(devnet.root)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=scaled(60),
    ).stdout.split("\n")
    assert out[0].split()[:2] == ["btc", str(pids["btc"])]
    assert out[1].split()[:2] == ["ltc", str(pids["ltc"])]

    Devnet(devnet.root).up()
    assert {name: Devnet(devnet.root).node(name).pid for name in ("btc", "ltc")} == pids


def test_scripts_devnet_round_trip(tmp_path: Path) -> None:
    """`scripts/devnet` up / tip / pay / mine / status / down work as separate processes on one directory."""
    root = tmp_path / "dn"

    def devnet_cli(*args: str) -> str:
        return run_devnet_cli(root, *args, timeout=120)

    try:
        out = devnet_cli("up", "--chains", "btc", "--webhook-url", "http://127.0.0.1:9/hook")
        assert "btc: bsv" in out and "zmq=tcp://127.0.0.1:" in out
        config = tomllib.loads((root / "watcherd.toml").read_text())
        assert set(config["chains"]) == {"btc"}
        assert config["webhook"]["url"] == "http://127.0.0.1:9/hook" and config["webhook"]["secret"]
        assert config["store"]["path"] == str(root / "watcherd.sqlite3")

        height = int(devnet_cli("tip", "btc").split()[0])
        address = Devnet(root).node("btc").new_address()
        txid = devnet_cli("pay", "btc", address, "1.5").strip()
        assert len(txid) == 64
        assert len(devnet_cli("mine", "btc", "2").split()) == 2
        assert int(devnet_cli("tip", "btc").split()[0]) == height + 2
        assert f"tip={height + 2}" in devnet_cli("status")
    finally:
        devnet_cli("down")
    assert "btc: stopped" in devnet_cli("status")
    assert not Devnet(root).node("btc").is_running()


def test_scripts_devnet_runs_anvil_with_the_test_tokens(tmp_path: Path) -> None:
    """anvil joins the devnet: its config table carries the deployed tokens and passes check-config; ETH and
    token payments and mining work from separate processes."""
    root = tmp_path / "dn"

    def devnet_cli(*args: str) -> str:
        return run_devnet_cli(root, *args, timeout=120)

    try:
        assert "eth: anvil" in devnet_cli("up", "--chains", "eth")
        config = tomllib.loads((root / "watcherd.toml").read_text())
        assert config["chains"]["eth"]["kind"] == "ethereum"
        assert {t["symbol"] for t in config["chains"]["eth"]["tokens"]} == {"USDC", "DAI"}
        check = subprocess.run([sys.executable, "-m", "watcherd", "--config", str(root / "watcherd.toml"),
                                "check-config"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
        node = Devnet(root).node("eth")
        target = "0x000000000000000000000000000000000000dEaD"
        before = node.balance(target)
        assert devnet_cli("pay", "eth", target, "1.5").strip().startswith("0x")
        assert devnet_cli("pay", "--token", "USDC", "eth", target, "2").strip().startswith("0x")
        devnet_cli("mine", "eth", "1")
        assert node.balance(target) - before == 15 * 10**17
    finally:
        devnet_cli("down")
    assert not Devnet(root).node("eth").is_running()


def test_scripts_devnet_runs_monerod_with_a_customer_wallet(tmp_path: Path) -> None:
    """monerod and the customer's wallet-rpc join the devnet: the config carries the operator's primary
    address and view key (never the spend key) and passes check-config; paying and mining work from separate
    processes, and `down` stops both processes by their pids."""
    from watcherd.chains.monero import crypto as xmr_crypto

    root = tmp_path / "dn"
    pids: tuple[int | None, ...] = ()

    def devnet_cli(*args: str) -> str:
        return run_devnet_cli(root, *args, timeout=240)

    try:
        assert "xmr: monerod" in devnet_cli("up", "--chains", "xmr")
        table = tomllib.loads((root / "watcherd.toml").read_text())["chains"]["xmr"]
        assert (table["kind"], table["network"]) == ("monero", "regtest")
        keys_file = root / "operator-monero-keys.json"
        assert keys_file.stat().st_mode & 0o777 == 0o600
        spend_secret = bytes.fromhex(json.loads(keys_file.read_text())["spend_secret"])
        assert spend_secret.hex() not in (root / "watcherd.toml").read_text()
        address = xmr_crypto.decode_address(table["primary_address"])
        assert xmr_crypto.public_key(bytes.fromhex(table["view_key"])) == address.view_public
        assert xmr_crypto.public_key(spend_secret) == address.spend_public
        check = subprocess.run([sys.executable, "-m", "watcherd", "--config", str(root / "watcherd.toml"),
                                "check-config"], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr

        node = Devnet(root).node("xmr")
        assert node.is_running() and node.pid and node.wallet_pid
        pids = (node.pid, node.wallet_pid)
        height = int(devnet_cli("tip", "xmr").split()[0])
        txid = devnet_cli("pay", "xmr", table["primary_address"], "1.5").strip()
        assert len(txid) == 64 and txid in node.pool()
        assert len(devnet_cli("mine", "xmr", "2").split()) == 2
        assert node.tip()[0] == height + 2
        assert txid not in node.pool()
        assert "xmr: monerod" in devnet_cli("status")
    finally:
        devnet_cli("down")
    assert not Devnet(root).node("xmr").is_running()
    assert not any(pid_alive(pid) for pid in pids if pid)  # a zombie awaiting its reaper counts as gone


def test_write_config_prices_the_running_chains_coins_in_usd(devnet: Devnet, tmp_path: Path) -> None:
    """With usd_rates the config carries fixed USD prices of the running nodes' coins (no exchange asked, so a
    priced invoice works offline) and nothing for coins it does not watch; the daemon's loader accepts it."""
    path = devnet.write_config(tmp_path / "c.toml", store_path=tmp_path / "s.sqlite3", api_port=18444,
                               api_token="0123456789abcdef0", webhook_url=None, webhook_secret=None, usd_rates=True)
    config = tomllib.loads(path.read_text())
    assert config["rates"] == {"sources": [], "currencies": ["USD"], "fixed": {"BTC_USD": "50000", "LTC_USD": "100"}}
    check = subprocess.run([sys.executable, "-m", "watcherd", "--config", str(path), "check-config"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_devnet_help_shows_no_path_of_this_machine() -> None:
    """`scripts/devnet --help` and each command's help name the default directory as the checkout's devnet/, not
    this machine's path, and document --chains, --dir and --webhook-url."""
    commands = ["", "up", "down", "status", "pay", "webhooks", "mine", "bump", "tip"]
    shown = {c: subprocess.run([str(REPO_ROOT / "scripts" / "devnet"), *c.split(), "--help"], capture_output=True,
                               text=True, timeout=60, check=True).stdout for c in commands}
    for command, text in shown.items():
        assert str(REPO_ROOT) not in text, (command, text)
    up = " ".join(shown["up"].split())
    assert "--dir DIRECTORY" in up and "[default: (devnet/ in the checkout)]" in up
    assert "--chains TEXT Comma-separated chains to start, of: btc, eth, ltc, xmr." in up
    assert "--webhook-url URL Where the daemon POSTs its webhooks" in up


def test_a_second_up_keeps_the_config_and_the_postgres_store() -> None:
    """A second `up` under a daemon keeps its API port and token, the webhook and its secret, and the store:
    `up --postgres` then a plain `up` stays on PostgreSQL (it flipped back to SQLite, and the port and token
    changed, so the next CLI call met a refused connection)."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="watcherd-devnet-"))  # outside pytest's tree, private to root: the
    base.chmod(0o755)  # server runs as the postgres user
    root = base / "dn"
    try:
        first_out = run_devnet_cli(root, "up", "--chains", "btc", "--postgres", timeout=180)
        first = tomllib.loads((root / "watcherd.toml").read_text())
        assert first["store"]["url"].startswith("postgresql://")
        assert "next: start the daemon:" in first_out
        again = run_devnet_cli(root, "up", "--chains", "btc", timeout=180)
        second = tomllib.loads((root / "watcherd.toml").read_text())
        for table in ("store", "api", "webhook", "rates"):
            assert second[table] == first[table], table
        assert "postgres:" in again
        assert "postgres" not in run_devnet_cli(root, "down", timeout=120).replace("stopping postgres", "")
        receiver = Devnet(root).receiver()
        assert receiver is not None and not receiver.process.running()
    finally:
        run_devnet_cli(root, "down", timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def test_readme_try_it_runs_as_printed(tmp_path: Path) -> None:
    """Every command of the README's "Try it" section, as printed, in one shell from a checkout: devnet up, the
    daemon, a 49.00 USD invoice at 0.00098 BTC or 0.49 LTC, paid with `devnet pay`, its webhooks received with
    their signatures checked, paid; then everything stopped. The README cannot drift from what runs."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it\n"):]
    section = section[:section.index("\n---\n")]
    commands = [line[4:] for line in section.splitlines() if line.startswith("    ")]
    assert commands[0].startswith("scripts/devnet up") and commands[-1].startswith("kill %1")
    # a checkout of its own: the repository's scripts and virtualenv, its devnet directory here
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("scripts", ".venv"):
        (checkout / name).symlink_to(REPO_ROOT / name)
    env = {**os.environ, "WATCHERD_DEVNET_DIR": str(checkout / "devnet"), "PYTHONPATH": str(REPO_ROOT)}
    env.pop("WATCHERD_CONFIG", None)
    shell = subprocess.Popen(["bash", "-c", "set -euo pipefail\n" + "\n".join(commands)], cwd=checkout, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = shell.communicate(timeout=scaled(300))
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGTERM)  # the shell and the daemon it started in the background
            shell.wait(30)
        subprocess.run([str(REPO_ROOT / "scripts" / "devnet"), "down", "--dir", str(checkout / "devnet")],
                       capture_output=True, timeout=scaled(120))
    log = (checkout / "devnet" / "watcherd.log").read_text(errors="replace") if shell.returncode else ""
    assert shell.returncode == 0, out + log
    # (the repository's virtualenv, named from this checkout of symlinks by its real path)
    assert f"next: start the daemon:  {REPO_ROOT}/.venv/bin/watcherd --config devnet/watcherd.toml run" in out
    assert re.search(r"^btc +0\.00098 BTC +0\.00098 BTC +50000 USD +2 +not picked$", out, re.MULTILINE), out
    assert re.search(r"^ltc +0\.49 LTC +0\.49 LTC +100 USD +2 +not picked$", out, re.MULTILINE), out
    assert re.search(r"invoice\.processing +inv_\w+ +processing +received 49\.00 of 49\.00 USD +signature ok", out)
    assert re.search(r"invoice\.paid +inv_\w+ +paid +received 49\.00 of 49\.00 USD +signature ok", out), out
    assert re.search(r"^status +paid$", out, re.MULTILINE), out
    assert re.search(r"^btc +0\.00098 BTC +49\.00 USD +2/2 +confirmed ", out, re.MULTILINE), out
    assert not Devnet(checkout / "devnet").running_nodes()


# ---- every command block of the README ---------------------------------------------------------------------

# Each indented block of the README by its first line: what it is, and where it runs. A block that is not here
# fails test_every_readme_block_is_run_or_said_why, so a new one is either run or excused by name.
README_BLOCKS = {  # a regular expression its first line starts with (up to a comment or a wide gap): why
    r"scripts/demo$": "the whole install and demo, and the whole suite (scripts/test) itself",
    r"scripts/devnet up$": "run: test_readme_try_it_runs_as_printed",
    r"scripts/devnet pay btc \$id$": "run: test_readme_try_it_runs_as_printed",
    r"POST /v1/invoices$": "run: test_readme_api_cli_and_page_examples_run_as_printed",
    r"GET  /i/\{id\}$": "run: test_readme_api_cli_and_page_examples_run_as_printed",
    r"watcherd run$": "run: test_readme_api_cli_and_page_examples_run_as_printed",
    r"\[store\]$": "TOML, not a command (the config tests load every key)",
    r"CREATE ROLE ": "SQL for the operator's PostgreSQL server",
    r"watcherd store copy --from /var/lib/": "this host's paths: tests/test_postgres.py copies",
    r"watcherd [0-9.]+: API on ": "log lines, not a command (tests/test_log_lines.py)",
    r"apt install ": "the install as root on a host: tests/test_packaging.py installs the wheel",
    r"export WATCHERD_CONFIG=/etc/": "this host's paths: "
                                    "test_cli.py::test_status_and_invoice_commands_work_on_the_host_with_a_token_file",
    r"watcherd/$": "the source tree, not a command",
    r"scan_tx throughput ": "benchmark figures, not a command",
}


def readme_blocks() -> list[tuple[int, list[str]]]:
    """Every block of 4-space-indented lines outside fenced code: (its first line's number, its lines)."""
    blocks: list[tuple[int, list[str]]] = []
    current: list[str] = []
    fenced = False
    for number, line in enumerate((REPO_ROOT / "README.md").read_text().splitlines() + [""], start=1):
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("    "):
            current.append(line[4:])
        elif not fenced and not line.strip() and current:
            current.append("")
        elif current:
            while current and not current[-1]:
                current.pop()
            blocks.append((number - len(current) - 1, current))
            current = []
    return blocks


def _first(block: list[str]) -> str:
    """A block's name: its first line up to a comment or the gap before its description."""
    return re.split(r" {3,}|  #", block[0])[0].rstrip()


def test_every_readme_block_is_run_or_said_why() -> None:
    """Each command block of the README is run by a test, or named here with the reason it is not (a host's
    paths, root, SQL, not a command): one added without either fails here."""
    names = [(n, _first(b)) for n, b in readme_blocks()]
    unknown = [(n, name) for n, name in names if not any(re.match(key, name) for key in README_BLOCKS)]
    assert unknown == [], f"README blocks neither run nor excused (add them to README_BLOCKS): {unknown}"
    gone = [key for key in README_BLOCKS if not any(re.match(key, name) for _, name in names)]
    assert gone == [], gone  # nothing excused that is no longer there


def _readme_block(key: str) -> list[str]:
    return next(b for _, b in readme_blocks() if re.match(key, _first(b)))


def cli_variants(synopsis: str) -> list[str]:
    """A synopsis line as commands: without its `[...]` options and with them, the k-th alternative of each
    `a|b|c` in the k-th pair (k up to the most alternatives any has)."""
    line = synopsis.split("  #")[0].strip()
    groups = re.findall(r"\[([^\]]*)\]", line)
    most = max([len(word.split("|")) for word in line.replace("[", " ").replace("]", " ").split()] + [1])
    variants: list[str] = []
    for k in range(most):
        for with_options in (False, True):
            text = re.sub(r"\[([^\]]*)\]", (lambda m: m[1]) if with_options else "", line)
            words = [w.split("|")[min(k, len(w.split("|")) - 1)] for w in text.split()]
            command = " ".join(words)
            if command not in variants and (with_options or not groups or k == 0 or "|" in re.sub(
                    r"\[[^\]]*\]", "", line)):
                variants.append(command)
    return variants


def test_cli_variants_cover_each_option_and_alternative() -> None:
    """The reading of a synopsis line: bare, then with its options, each alternative once."""
    assert cli_variants("watcherd invoice show|cancel <id> [--json]   # x") == [
        "watcherd invoice show <id>", "watcherd invoice show <id> --json", "watcherd invoice cancel <id>",
        "watcherd invoice cancel <id> --json"]
    assert cli_variants("watcherd webhooks list [--state pending|delivered|failed] [--json]") == [
        "watcherd webhooks list", "watcherd webhooks list --state pending --json",
        "watcherd webhooks list --state delivered --json", "watcherd webhooks list --state failed --json"]
    assert cli_variants("watcherd check-config") == ["watcherd check-config"]


def api_requests(block: list[str]) -> list[tuple[str, str, object, int, bool]]:
    """The HTTP block's requests: (method, path, JSON body or None, the status it promises, with the token).
    An entry is a line starting with its method; its indented lines carry on its body and its description."""
    entries: list[list[str]] = []
    for line in block:
        if re.match(r"(GET|POST|PUT|DELETE) ", line):
            entries.append([line])
        elif entries and line.strip():
            entries[-1].append(line.strip())
    requests = []
    for entry in entries:
        method, path, rest = (entry[0].split(None, 2) + [""])[:3]
        text = " ".join([rest, *entry[1:]]).strip()
        body = None
        if text.startswith("{"):
            body, end = json.JSONDecoder().raw_decode(text)
            text = text[end:]
        promised = re.search(r"->\s*(\d{3})\b", text)
        requests.append((method, path, body, int(promised[1]) if promised else 200, "(no auth)" not in text))
    return requests


def test_readme_api_cli_and_page_examples_run_as_printed(tmp_path: Path) -> None:
    """On the default devnet (btc, ltc; `scripts/devnet up`) every line of the README's command line synopsis runs
    as printed (bare and with its options, `watcherd run` being the daemon) and exits 0; every request of its
    HTTP API and payment page listings, sent as printed, answers the status it promises (201, 202; else 200),
    `{id}` the last invoice a listed POST created. The first that fails names its line: the README cannot drift
    from what the daemon and the CLI accept."""
    import urllib.error
    import urllib.request

    from watcherd.http.checkout import ASSETS

    root = tmp_path / "devnet"
    run_devnet_cli(root, "up", "--chains", "btc,ltc", timeout=180)
    config = root / "watcherd.toml"
    settings = tomllib.loads(config.read_text())
    base, token = f"http://{settings['api']['listen']}", settings["api"]["token"]
    bin_dir = tmp_path / "bin"  # `watcherd` on PATH: this checkout's, as an installed one would be
    bin_dir.mkdir()
    (bin_dir / "watcherd").write_text(f'#!/bin/sh\nexec {sys.executable} -m watcherd "$@"\n')
    (bin_dir / "watcherd").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT),
           "WATCHERD_CONFIG": str(config), "NO_COLOR": "1"}
    env.pop("WATCHERD_TOKEN_FILE", None)

    def call(method: str, path: str, body: object = None, auth: bool = True) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{base}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json",
                                                  **({"Authorization": f"Bearer {token}"} if auth else {})})
        try:
            with urllib.request.urlopen(request, timeout=scaled(30)) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except urllib.error.URLError as exc:  # not listening (yet)
            return 0, str(exc).encode()

    daemon: subprocess.Popen[str] | None = None
    try:
        ids: dict[str, str] = {}

        def filled(text: str) -> str:
            for name, value in {"<event id>": ids.get("event", ""), "<id>": ids.get("invoice", ""),
                                "<method>": "btc", "SECONDS": "30"}.items():
                text = text.replace(name, value)
            return text

        synopsis: list[str] = []
        for line in _readme_block(r"watcherd run$"):
            if line.startswith(" ") and synopsis:
                synopsis[-1] += " " + line.strip()  # a continued line
            elif line.strip():
                synopsis.append(line)
        for line in synopsis:
            if line.startswith("watcherd store copy"):
                continue  # needs a PostgreSQL server: tests/test_postgres.py copies to one
            for command in cli_variants(line):
                if command == "watcherd run":
                    with (tmp_path / "watcherd.log").open("w") as log:  # the daemon keeps its own descriptor
                        daemon = subprocess.Popen(["watcherd", "run"], env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  text=True)
                    wait_for(lambda: call("GET", "/readyz")[0] == 200, 60, "the devnet daemon to be ready")
                    created = json.loads(call("POST", "/v1/invoices", {
                        "currency": "USD", "amount": "5.00", "payment_methods": ["btc", "ltc"]})[1])
                    ids["invoice"] = created["id"]
                    events = json.loads(call("GET", f"/v1/invoices/{created['id']}/events")[1])["events"]
                    ids["event"] = events[0]["id"]
                    continue
                done = subprocess.run(["bash", "-c", filled(command)], env=env, capture_output=True, text=True,
                                      timeout=scaled(60), cwd=tmp_path)
                assert done.returncode == 0, f"README: {line}\nran: {filled(command)}\n{done.stdout}{done.stderr}"
        assert daemon is not None and daemon.poll() is None, "the synopsis starts the daemon: watcherd run"

        for block in (r"POST /v1/invoices$", r"GET  /i/\{id\}$"):
            for method, path, body, promised, auth in api_requests(_readme_block(block)):
                sent = path.replace("{id}", ids["invoice"]).replace("{method}", "btc").replace(
                    "{event_id}", ids["event"]).replace("{name}", ASSETS.css)
                status, answer = call(method, sent, body, auth)
                assert status == promised, f"README: {method} {path}\nsent {method} {sent}: {status} {answer[:300]!r}"
                if method == "POST" and path == "/v1/invoices":
                    ids["invoice"] = json.loads(answer)["id"]
                    ids["event"] = json.loads(call("GET", f"/v1/invoices/{ids['invoice']}/events")[1])[
                        "events"][0]["id"]
        priced = json.loads(call("GET", f"/v1/invoices/{ids['invoice']}")[1])
        assert (priced["currency"], priced["status"]) == ("USD", "cancelled")  # the listing's own steps ran
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(scaled(30))
        run_devnet_cli(root, "down", timeout=120)


# ---- helpers ----------------------------------------------------------------------------------------------


def run_devnet_cli(root: Path, *args: str, timeout: float) -> str:
    """`scripts/devnet ARGS --dir ROOT` in its own process; its stdout, or an assertion naming what failed."""
    result = subprocess.run([str(REPO_ROOT / "scripts" / "devnet"), *args, "--dir", str(root)],
                            capture_output=True, text=True, timeout=scaled(timeout))
    assert result.returncode == 0, f"scripts/devnet {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_wait_for_returns_the_value_or_names_what_it_waited_for() -> None:
    """wait_for hands back the predicate's truthy value, and a timeout says what never happened."""
    assert wait_for(lambda: 42, 1, "the answer") == 42
    with pytest.raises(AssertionError, match="waiting for the moon to turn blue"):
        wait_for(lambda: None, 0.1, "the moon to turn blue")
