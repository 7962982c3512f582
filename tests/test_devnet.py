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
