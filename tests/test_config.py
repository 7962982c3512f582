"""The config loader (watcherd.config): every problem at once, each naming the file and the key; watch-only.

Private keys used here are derived at test time from the public test mnemonic "abandon ... about".
"""

import re
from decimal import Decimal
from pathlib import Path

import pytest
from bip_utils import Bip39SeedGenerator, Bip44, Bip44Changes, Bip44Coins, Bip84, Bip84Coins, P2PKHPubKeyModes
from conftest import EXAMPLE_OPERATOR_SEED, example_operator_zpubs

from watcherd.config import ChainLabel, Config, load
from watcherd.exceptions import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "watcherd.example.toml"
WATCH_ONLY = ("watcherd is watch-only: configure the account's xpub/zpub (Monero: the private view key and the "
              "primary address) instead")
MNEMONIC = " ".join(["abandon"] * 11 + ["about"])
ZPUB = example_operator_zpubs()["btc"]  # the operator's own key (not a public test vector)
TOKEN = "tok-0123456789abcdef"
STORE_REQUIRED = 'is required (or url = "postgresql://user@host:5432/database" for PostgreSQL)'
SECRET = "whsec-0123456789abcdef"

MINIMAL = f"""
[store]
path = "watcherd.sqlite3"

[api]
token = "{TOKEN}"

[chains.btc]
kind = "bitcoin"
coin = "bitcoin"
network = "mainnet"
rpc_url = "http://127.0.0.1:8332"
rpc_cookie_file = "bitcoind/.cookie"
xpub = "{ZPUB}"
"""


@pytest.fixture(scope="module")
def private_material() -> dict[str, str]:
    seed = Bip39SeedGenerator(MNEMONIC).Generate()
    btc84 = Bip84.FromSeed(seed, Bip84Coins.BITCOIN).Purpose().Coin().Account(0)
    tbtc84 = Bip84.FromSeed(seed, Bip84Coins.BITCOIN_TESTNET).Purpose().Coin().Account(0)
    btc44 = Bip44.FromSeed(seed, Bip44Coins.BITCOIN).Purpose().Coin().Account(0)
    tbtc44 = Bip44.FromSeed(seed, Bip44Coins.BITCOIN_TESTNET).Purpose().Coin().Account(0)
    ltc44 = Bip44.FromSeed(seed, Bip44Coins.LITECOIN).Purpose().Coin().Account(0)
    first = btc84.Change(Bip44Changes.CHAIN_EXT).AddressIndex(0).PrivateKey()
    return {
        "xprv": btc44.PrivateKey().ToExtended(),
        "zprv": btc84.PrivateKey().ToExtended(),
        "tprv": tbtc44.PrivateKey().ToExtended(),
        "vprv": tbtc84.PrivateKey().ToExtended(),
        "wif": first.ToWif(),
        "wif-uncompressed": first.ToWif(pub_key_mode=P2PKHPubKeyModes.UNCOMPRESSED),
        "wif-ltc": ltc44.Change(Bip44Changes.CHAIN_EXT).AddressIndex(0).PrivateKey().ToWif(),
        "mnemonic": MNEMONIC,
    }


def write(tmp_path: Path, text: str, name: str = "watcherd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path) -> dict[str, str]:
    """{dotted key: message} of the ConfigError load(path) raises; every problem must name `path`."""
    with pytest.raises(ConfigError) as error:
        load(path)
    found = error.value.problems
    assert found, "ConfigError without problems"
    assert {file for file, _, _ in found} == {str(path)}
    return {key: message for _, key, message in found}


def test_example_config_loads(example_config):
    """The shipped example is valid once what it says to replace is replaced, and warns of nothing; the keys
    set derive the operator's own wallet's addresses."""
    config = load(example_config)
    assert isinstance(config, Config)
    assert config.warnings == ()
    assert set(config.chains) == {"btc", "ltc"}
    btc, ltc = config.chains["btc"], config.chains["ltc"]
    assert btc.zmq and not ltc.zmq
    assert btc.rpc_cookie_file is None
    assert (btc.rpc_user, btc.rpc_password) == ("watcherd", "set-bitcoind-rpc-password")
    assert ltc.rpc_user == "watcherd" and ltc.rpc_password
    assert (btc.asset, ltc.asset, btc.decimals) == ("BTC", "LTC", 8)
    assert ltc.underpaid_tolerance_percent == Decimal("0.5")
    for chain, coin in ((btc, Bip84Coins.BITCOIN), (ltc, Bip84Coins.LITECOIN)):
        wallet = Bip84.FromSeed(EXAMPLE_OPERATOR_SEED, coin).Purpose().Coin().Account(0)
        first = wallet.Change(Bip44Changes.CHAIN_EXT).AddressIndex(0).PublicKey().ToAddress()
        assert chain.address_deriver().derive(0)[0] == first
    assert config.webhook is not None and config.webhook.max_retry_hours == 72
    assert config.api.listen == "127.0.0.1:8420"


def test_defaults(tmp_path):
    """Every default the documentation promises, and relative paths resolved against the file's directory."""
    config = load(write(tmp_path, MINIMAL))
    assert config.path == tmp_path / "watcherd.toml"
    assert config.store.path == tmp_path / "watcherd.sqlite3"
    assert (config.api.host, config.api.port, config.api.token) == ("127.0.0.1", 8420, TOKEN)
    assert config.webhook is None
    assert (config.log.level, config.log.format) == ("info", "plain")
    btc = config.chains["btc"]
    assert btc.rpc_cookie_file == tmp_path / "bitcoind" / ".cookie"
    assert (btc.kind, btc.coin, btc.network.name, btc.network.hrp) == ("bitcoin", "bitcoin", "mainnet", "bc")
    assert btc.address_type == "p2wpkh"
    assert btc.confirmations == 2
    assert btc.underpaid_tolerance_percent == Decimal(0)
    assert btc.invoice_expiry_seconds == 900
    assert btc.poll_interval_seconds == 2.0
    assert btc.start_height is None
    assert btc.node_down_after_seconds == 30
    assert not btc.zmq and btc.zmq_rawtx is None


def test_no_chains_is_valid(tmp_path):
    config = load(write(tmp_path, f'[store]\npath = "/tmp/x.sqlite3"\n[api]\ntoken = "{TOKEN}"\n'))
    assert config.chains == {}


def test_every_problem_is_reported_at_once(tmp_path):
    """One round trip fixes the file: problems in several tables are all listed, each with its key."""
    text = f"""
[store]
[api]
listen = "localhost"
token = "{TOKEN}"
[log]
level = "verbose"
[webhook]
url = "ftp://billing.example/hook"
[chains.btc]
kind = "bitcoin"
coin = "bitcoin"
network = "mainnet"
rpc_url = "http://127.0.0.1:8332"
rpc_cookie_file = ".cookie"
xpub = "{ZPUB}"
confirmations = 0
underpaid_tolerance_percent = 100
invoice_expiry_seconds = 59
start_height = -1
poll_interval_seconds = 0
"""
    found = problems(write(tmp_path, text))
    assert found == {
        "store.path": STORE_REQUIRED,
        "api.listen": "must be host:port, e.g. 127.0.0.1:8420 or [::1]:8420",
        "log.level": "must be one of: debug, info, warning, error",
        "webhook.url": "must be an http:// or https:// URL",
        "webhook.secret": "is required (or secret_file naming a file that holds it)",
        "chains.btc.confirmations": "must be an integer ≥ 1",
        "chains.btc.underpaid_tolerance_percent": "must be a number 0 ≤ x < 100",
        "chains.btc.invoice_expiry_seconds": "must be an integer ≥ 60",
        "chains.btc.start_height": "must be an integer ≥ 0",
        "chains.btc.poll_interval_seconds": "must be a number > 0",
    }
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text))
    line = f"{tmp_path / 'watcherd.toml'}: chains.btc.confirmations: must be an integer ≥ 1"
    assert line in str(error.value).splitlines()


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("confirmations = true", "chains.btc.confirmations"),  # bool is not an integer here
        ('confirmations = "2"', "chains.btc.confirmations"),
        ("confirmations = 2.0", "chains.btc.confirmations"),
        ("underpaid_tolerance_percent = nan", "chains.btc.underpaid_tolerance_percent"),
        ('address_type = "p2wsh"', "chains.btc.address_type"),
        ("rpc_url = 8332", "chains.btc.rpc_url"),
        ("node_down_after_seconds = 0", "chains.btc.node_down_after_seconds"),
        ("node_down_after_seconds = 7200", "chains.btc.node_down_after_seconds"),
        ('rpc_url = "127.0.0.1:8332"', "chains.btc.rpc_url"),
    ],
)
def test_bad_values(tmp_path, line, key):
    name = line.split(" = ")[0]
    if f"\n{name} = " in MINIMAL:
        text = re.sub(rf"^{name} = .*$", line, MINIMAL, flags=re.M)
    else:
        text = MINIMAL + line
    assert set(problems(write(tmp_path, text + "\n"))) == {key}


def test_unknown_keys_are_errors(tmp_path):
    """A typo must not silently leave a default in force."""
    text = MINIMAL.replace("[api]", "[api]\nlisten_on = '1.2.3.4:1'")
    text += "confirmation = 6\n[metrics]\nport = 9\n[graphite]\nhost = 'x'\n"
    found = problems(write(tmp_path, text))
    assert found == {
        "api.listen_on": "unknown key (did you mean listen?)",
        "chains.btc.confirmation": "unknown key (did you mean confirmations?)",
        "metrics.port": "unknown key",
        "graphite": "unknown key",
    }


def test_chain_name_and_kind(tmp_path):
    text = MINIMAL.replace("[chains.btc]", "[chains.BTC]") + '[chains.sol]\nkind = "solana"\n'
    found = problems(write(tmp_path, text))
    assert found["chains.BTC"].startswith("chain name must match")
    assert found["chains.sol.kind"].startswith("must be one of: bitcoin, ethereum")


def test_litecoin_has_no_signet(tmp_path):
    text = MINIMAL.replace('coin = "bitcoin"', 'coin = "litecoin"').replace("mainnet", "signet")
    assert problems(write(tmp_path, text))["chains.btc.network"] == "litecoin has no signet network"


# --- secrets ------------------------------------------------------------------------------------------------


def test_secret_files_relative_to_the_config(tmp_path):
    """*_file paths resolve against the config's directory; exactly one trailing newline is stripped."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api-token").write_text(TOKEN + "\n")
    (tmp_path / "secrets" / "webhook").write_text(SECRET + "  \n\n")
    (tmp_path / "secrets" / "rpc").write_text("rpc-password\r\n")
    rpc = 'rpc_user = "watcherd"\nrpc_password_file = "secrets/rpc"'
    webhook = '[webhook]\nurl = "https://billing.internal/h"\nsecret_file = "secrets/webhook"\n'
    text = (
        MINIMAL.replace(f'token = "{TOKEN}"', 'token_file = "secrets/api-token"')
        .replace('rpc_cookie_file = "bitcoind/.cookie"', rpc)
        .replace("[store]", webhook + "[store]")
    )
    config = load(write(tmp_path / "secrets", text, "../watcherd.toml"))
    assert config.api.token == TOKEN
    assert config.webhook is not None and config.webhook.secret == SECRET + "  \n"
    assert config.chains["btc"].rpc_password == "rpc-password"


def test_missing_secret_file_names_key_and_path(tmp_path):
    text = MINIMAL.replace(f'token = "{TOKEN}"', 'token_file = "nope/api-token"')
    found = problems(write(tmp_path, text))
    missing = tmp_path / "nope" / "api-token"
    assert found == {"api.token_file": f"cannot read {missing}: No such file or directory"}


def test_secret_inline_and_file_are_exclusive(tmp_path):
    found = problems(write(tmp_path, MINIMAL.replace("[api]", '[api]\ntoken_file = "t"')))
    assert found == {"api.token": "set token or token_file, not both"}
    found = problems(write(tmp_path, MINIMAL.replace(f'token = "{TOKEN}"', "")))
    assert found == {"api.token": "is required (or token_file naming a file that holds it)"}


def test_secrets_never_in_messages_or_repr(tmp_path):
    """Errors and repr() end up in logs; secret values must not."""
    short = "short-s3cret"
    text = MINIMAL.replace(TOKEN, short).replace(
        'rpc_cookie_file = "bitcoind/.cookie"', 'rpc_user = "u"\nrpc_password = "rpc-pass-SECRET"'
    )
    found = problems(write(tmp_path, text))
    assert found == {"api.token": "must be at least 16 characters"}
    assert short not in repr(found)

    webhook = f'[webhook]\nurl = "https://h.internal/x"\nsecret = "{SECRET}"\n'
    config = load(write(tmp_path, MINIMAL.replace("[store]", webhook + "[store]")))
    for secret in (TOKEN, SECRET, ZPUB):
        assert secret not in repr(config)


def test_the_unedited_example_is_refused_naming_each_placeholder():
    """The example's CHANGE-ME secrets would open the API and sign webhooks with values anyone can read, its keys
    are public test vectors anyone can spend from, its webhook host never answers: each is refused by its key,
    nothing else in the example is."""
    found = problems(EXAMPLE)
    secrets = {"api.token", "webhook.secret", "chains.btc.rpc_password", "chains.ltc.rpc_password"}
    assert set(found) == secrets | {"webhook.url", "chains.btc.xpub", "chains.ltc.xpub"}
    assert all(found[key].startswith("is the example's placeholder (CHANGE-ME...)") for key in secrets)
    assert found["webhook.url"].startswith("is the example's placeholder (a reserved example host")
    assert found["chains.btc.xpub"].startswith("is a public test vector (the mnemonic \"abandon ... about\" at "
                                               "m/84'/0'/0'): anyone can spend what is paid to it")
    assert "m/84'/2'/0'" in found["chains.ltc.xpub"]
    assert "CHANGE-ME-0123" not in repr(found)  # the value itself is never shown


def _mainnet_and_regtest(tmp_path: Path, chain: str) -> tuple[dict[str, str], Config]:
    """(the problems on mainnet, the config on regtest) of MINIMAL with `chain` as its btc table's lines."""
    base = MINIMAL.split("[chains.btc]")[0]
    mainnet = problems(write(tmp_path, base + chain))
    return mainnet, load(write(tmp_path, base + chain.replace('network = "mainnet"', 'network = "regtest"')))


@pytest.mark.parametrize("path", ["m/84'/0'/0'", "m/44'/1'/0'", "m/0'"])
def test_a_public_test_vector_key_is_refused_on_mainnet_in_any_encoding_and_file(tmp_path, path):
    """A key whose seed is published (BIP39's "abandon ... about", BIP32's own vectors) lets anyone sweep the
    invoices' money: refused on mainnet whatever its version bytes (the xpub and zpub encodings of one key) and
    from a file alike, naming where it is published; on regtest (as tpub, vpub) it is accepted, as tests and
    devnets use it."""
    from bip_utils import Base58Decoder, Base58Encoder, Bip32Slip10Secp256k1

    if path == "m/0'":
        key = Bip32Slip10Secp256k1.FromSeed(bytes.fromhex("000102030405060708090a0b0c0d0e0f")).DerivePath(path)
        where = "BIP32 test vector 1 at m/0'"
    else:
        key = Bip32Slip10Secp256k1.FromSeed(Bip39SeedGenerator(MNEMONIC).Generate()).DerivePath(path)
        where = f'the mnemonic "abandon ... about" at {path}'
    raw = Base58Decoder.CheckDecode(key.PublicKey().ToExtended())

    def encoded(version: str) -> str:
        return Base58Encoder.CheckEncode(bytes.fromhex(version) + raw[4:])

    base = MINIMAL.split("[chains.btc]")[0]
    chain = "[chains.btc]" + MINIMAL.split("[chains.btc]")[1]
    for version in ("0488b21e", "04b24746"):  # xpub, zpub
        found = problems(write(tmp_path, base + chain.replace(ZPUB, encoded(version))))
        assert found == {"chains.btc.xpub": f"is a public test vector ({where}): anyone can spend what is paid to "
                         "it; set your wallet's account key (test vectors are accepted on test networks only)"}
    (tmp_path / "xpub").write_text(encoded("0488b21e") + "\n")
    found = problems(write(tmp_path, base + chain.replace(f'xpub = "{ZPUB}"', 'xpub_file = "xpub"')))
    assert list(found) == ["chains.btc.xpub_file"] and where in found["chains.btc.xpub_file"]
    regtest = chain.replace('network = "mainnet"', 'network = "regtest"')
    for version in ("043587cf", "045f1cf6"):  # tpub, vpub
        config = load(write(tmp_path, base + regtest.replace(ZPUB, encoded(version))))
        assert config.chains["btc"].network.name == "regtest"
    assert load(write(tmp_path, MINIMAL)).chains["btc"].xpub == ZPUB  # the operator's own key is fine


def test_a_public_test_vector_key_is_refused_on_an_evm_chain_with_value(tmp_path):
    """The Ethereum key of "abandon ... about" (and Hardhat's "test ... junk") on chain 1 or Polygon is refused;
    on anvil's chain id 31337 or Sepolia it is accepted."""
    seed = Bip39SeedGenerator(MNEMONIC).Generate()
    xpub = Bip44.FromSeed(seed, Bip44Coins.ETHEREUM).Purpose().Coin().Account(0).PublicKey().ToExtended()
    hardhat = Bip44.FromSeed(Bip39SeedGenerator(" ".join(["test"] * 11 + ["junk"])).Generate(),
                             Bip44Coins.ETHEREUM).Purpose().Coin().Account(0).PublicKey().ToExtended()

    def eth(key: str, chain_id: int) -> Path:
        return write(tmp_path, MINIMAL.split("[chains.btc]")[0] + '[chains.eth]\nkind = "ethereum"\n'
                     f'ws_url = "ws://127.0.0.1:8546"\nchain_id = {chain_id}\nxpub = "{key}"\n')

    for key, where in ((xpub, '"abandon ... about"'), (hardhat, '"test ... junk"')):
        for chain_id in (1, 137):
            assert where in problems(eth(key, chain_id))["chains.eth.xpub"]
        for chain_id in (31337, 11155111):
            assert load(eth(key, chain_id)).chains["eth"].address_deriver().derive(0)[0].startswith("0x")


def test_the_example_webhook_host_is_refused(tmp_path):
    """A webhook to an RFC 2606 documentation host (the example's billing.example) never arrives: refused as the
    example's placeholder; a real host is fine."""
    for url in ("https://billing.example/hooks", "https://shop.example.com/h", "http://EXAMPLE.org./h"):
        text = MINIMAL.replace("[store]", f'[webhook]\nurl = "{url}"\nsecret = "{SECRET}"\n[store]')
        assert problems(write(tmp_path, text))["webhook.url"].startswith("is the example's placeholder")
    text = MINIMAL.replace("[store]", f'[webhook]\nurl = "https://examples.shop/h"\nsecret = "{SECRET}"\n[store]')
    assert load(write(tmp_path, text)).webhook is not None


@pytest.mark.parametrize("placeholder", ["CHANGE-ME-0123456789abcdef", "changeme-0123456789abcdef",
                                         "Change_Me_0123456789abcdef"])
def test_placeholder_secrets_are_refused_inline_and_from_files(tmp_path, placeholder):
    """Whatever its case, a placeholder is refused as an inline secret and in a secret file (by the file's key),
    where a secret merely containing the words is not."""
    assert problems(write(tmp_path, MINIMAL.replace(TOKEN, placeholder)))["api.token"].startswith(
        "is the example's placeholder")
    (tmp_path / "api-token").write_text(placeholder + "\n")
    found = problems(write(tmp_path, MINIMAL.replace(f'token = "{TOKEN}"', 'token_file = "api-token"')))
    assert set(found) == {"api.token_file"}
    assert load(write(tmp_path, MINIMAL.replace(TOKEN, "tok-please-change-me-0123"))).api.token


@pytest.mark.parametrize(("mode", "warned"), [(0o644, True), (0o640, True), (0o604, True), (0o600, False),
                                              (0o400, False)])
def test_a_secret_file_open_to_group_or_others_is_warned_of(tmp_path, mode, warned):
    """A secret file another account can read (or replace) still loads, with one warning naming the file and
    the fix; 0600 and 0400 warn of nothing."""
    secret = tmp_path / "api-token"
    secret.write_text(TOKEN + "\n")
    secret.chmod(mode)
    config = load(write(tmp_path, MINIMAL.replace(f'token = "{TOKEN}"', 'token_file = "api-token"')))
    assert config.api.token == TOKEN
    expected = [(str(tmp_path / "watcherd.toml"), "api.token_file",
                 f"{secret} is open to its group or others (mode {mode:04o}): chmod 600 {secret}")]
    assert list(config.warnings) == (expected if warned else [])


def test_every_kind_of_secret_file_is_judged(tmp_path):
    """The webhook secret, the RPC password and the xpub read from files are judged like the API token."""
    for name, value in (("webhook", SECRET), ("rpc", "rpc-password"), ("xpub", ZPUB)):
        (tmp_path / name).write_text(value)
        (tmp_path / name).chmod(0o644)
    text = (MINIMAL.replace('rpc_cookie_file = "bitcoind/.cookie"', 'rpc_user = "u"\nrpc_password_file = "rpc"')
            .replace(f'xpub = "{ZPUB}"', 'xpub_file = "xpub"')
            .replace("[store]", '[webhook]\nurl = "https://h.internal/x"\nsecret_file = "webhook"\n[store]'))
    config = load(write(tmp_path, text))
    assert {key for _, key, _ in config.warnings} == {"webhook.secret_file", "chains.btc.rpc_password_file",
                                                      "chains.btc.xpub_file"}


@pytest.mark.parametrize(("url", "ssl", "warned"), [
    ("postgresql://w@db.internal:5432/w", None, True),  # the default is prefer
    ("postgresql://w@10.0.0.5:5432/w", '"prefer"', True),
    ("postgresql://w@db.internal:5432/w", '"verify-full"', False),
    ("postgresql://w@db.internal:5432/w", '"require"', False),
    ("postgresql://w@127.0.0.1:5432/w", None, False),
    ("postgresql://w@localhost:5432/w", '"prefer"', False),
    ("postgresql://w@[::1]:5432/w", None, False),
])
def test_postgres_prefer_to_another_host_is_warned_of(tmp_path, url, ssl, warned):
    """ssl = "prefer" verifies nothing: to a host off this machine that is a warning (naming store.ssl and the
    fix, verify-full); on loopback, or with require / verify-full, there is none."""
    store = f'[store]\nurl = "{url}"\n' + (f"ssl = {ssl}\n" if ssl else "")
    config = load(write(tmp_path, MINIMAL.replace('[store]\npath = "watcherd.sqlite3"\n', store)))
    shown = [(key, message) for _, key, message in config.warnings]
    if warned:
        assert len(shown) == 1 and shown[0][0] == "store.ssl"
        assert "checks neither the certificate nor the host name" in shown[0][1]
        assert 'set ssl = "verify-full"' in shown[0][1]
    else:
        assert shown == []


def test_api_token_rejects_whitespace(tmp_path):
    found = problems(write(tmp_path, MINIMAL.replace(TOKEN, "has a space in it, 1234")))
    assert found == {"api.token": "must not contain whitespace or control characters"}


def test_who_may_frame_the_modal_payment_page(tmp_path):
    assert load(write(tmp_path, MINIMAL)).api.embed_origins == ("*",)  # BTCPay's modal works from any shop
    shops = MINIMAL.replace(f'token = "{TOKEN}"', f'token = "{TOKEN}"\nembed_origins = ["https://shop.example/", '
                                                  '"http://localhost:8080"]')
    assert load(write(tmp_path, shops)).api.embed_origins == ("https://shop.example", "http://localhost:8080")
    nobody = MINIMAL.replace(f'token = "{TOKEN}"', f'token = "{TOKEN}"\nembed_origins = []')
    assert load(write(tmp_path, nobody)).api.embed_origins == ("'none'",)
    for bad in ('"https://shop.example"', '["https://shop.example/checkout"]', '["javascript:alert(1)"]',
                '["https://a.example; script-src *"]', '[1]'):
        text = MINIMAL.replace(f'token = "{TOKEN}"', f'token = "{TOKEN}"\nembed_origins = {bad}')
        assert problems(write(tmp_path, text)) == {
            "api.embed_origins": 'must be a list of origins such as ["https://shop.example.com"], or ["*"]'}


# --- RPC and ZMQ --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "key", "message"),
    [
        ('rpc_user = "u"', "chains.btc.rpc_password", "is required with rpc_user (or rpc_password_file)"),
        ('rpc_password = "p"', "chains.btc.rpc_user", "is required with rpc_password"),
        ("", "chains.btc.rpc_cookie_file", "no RPC credentials"),
        ('rpc_cookie_file = "c"\nrpc_user = "u"\nrpc_password = "p"', "chains.btc.rpc_cookie_file", "both"),
    ],
)
def test_rpc_credentials(tmp_path, auth, key, message):
    text = MINIMAL.replace('rpc_cookie_file = "bitcoind/.cookie"', auth)
    assert message in problems(write(tmp_path, text))[key]


def test_rpc_url_without_credentials(tmp_path):
    text = MINIMAL.replace("http://127.0.0.1", "http://user:pw@127.0.0.1")
    assert "must not contain credentials" in problems(write(tmp_path, text))["chains.btc.rpc_url"]


def test_zmq_both_or_neither(tmp_path):
    """Half a ZMQ setup would miss blocks or transactions; the chain is either pushed to or polled."""
    found = problems(write(tmp_path, MINIMAL + 'zmq_rawtx = "tcp://127.0.0.1:28332"\n'))
    assert found == {
        "chains.btc.zmq_hashblock": "set both zmq_rawtx and zmq_hashblock, or neither to poll the node"
    }
    found = problems(write(tmp_path, MINIMAL + 'zmq_hashblock = "tcp://127.0.0.1:28333"\n'))
    assert set(found) == {"chains.btc.zmq_rawtx"}
    found = problems(write(tmp_path, MINIMAL + 'zmq_rawtx = "127.0.0.1:1"\nzmq_hashblock = "tcp://[::1]:28333"\n'))
    assert set(found) == {"chains.btc.zmq_rawtx"}

    text = MINIMAL + 'zmq_rawtx = "tcp://127.0.0.1:28332"\nzmq_hashblock = "ipc:///run/bitcoind/hashblock"\n'
    assert load(write(tmp_path, text)).chains["btc"].zmq


# --- keys ---------------------------------------------------------------------------------------------------


def test_cross_network_xpub(tmp_path):
    """A mainnet key on regtest (or the reverse) is named, with the reason."""
    vpub = Bip84.FromSeed(EXAMPLE_OPERATOR_SEED, Bip84Coins.BITCOIN_TESTNET).Purpose().Coin().Account(0)
    found = problems(write(tmp_path, MINIMAL.replace("mainnet", "regtest")))
    assert set(found) == {"chains.btc.xpub"}
    assert "zpub is a mainnet key but this chain is bitcoin regtest" in found["chains.btc.xpub"]
    found = problems(write(tmp_path, MINIMAL.replace(ZPUB, vpub.PublicKey().ToExtended())))
    assert "testnet key" in found["chains.btc.xpub"]
    found = problems(write(tmp_path, MINIMAL + 'address_type = "p2pkh"\n'))
    assert "zpub is a p2wpkh key but address_type is p2pkh" in found["chains.btc.xpub"]


def test_xpub_from_file(tmp_path):
    (tmp_path / "xpub").write_text(ZPUB + "\n")
    config = load(write(tmp_path, MINIMAL.replace(f'xpub = "{ZPUB}"', 'xpub_file = "xpub"')))
    assert config.chains["btc"].xpub == ZPUB


def test_two_chains_on_one_key(tmp_path):
    """Two chains deriving the same addresses would give one address to two invoices."""
    text = MINIMAL + MINIMAL[MINIMAL.index("[chains.btc]") :].replace("[chains.btc]", "[chains.btc2]")
    found = problems(write(tmp_path, text))
    assert found == {
        "chains.btc2.xpub": "derives the same addresses as chains.btc; each chain needs its own account key"
    }


# --- private material refusal -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("material", "table", "key", "why"),
    [
        ("xprv", "chains.btc", "xpub", "this is an extended PRIVATE key (xprv)"),
        ("zprv", "chains.btc", "xpub", "this is an extended PRIVATE key (zprv)"),
        ("tprv", "api", "token", "this is an extended PRIVATE key (tprv)"),
        ("vprv", "webhook", "secret", "this is an extended PRIVATE key (vprv)"),
        ("wif", "chains.btc", "rpc_password", "this is a WIF private key"),
        ("wif-uncompressed", "store", "label", "this is a WIF private key"),
        ("wif-ltc", "log", "target", "this is a WIF private key"),
        ("mnemonic", "webhook", "secret", "this is a BIP39 mnemonic (12 words)"),
        ("mnemonic", "chains.btc", "xpub", "this is a BIP39 mnemonic (12 words)"),
    ],
)
def test_private_values_are_refused_anywhere(tmp_path, private_material, material, table, key, why):
    """Watch-only: private keys and seeds are refused in any table, naming the key, never echoed."""
    value = private_material[material]
    text = (
        MINIMAL.replace("[store]", '[log]\n[webhook]\nurl = "https://h.internal/x"\n[store]')
        .replace(f'xpub = "{ZPUB}"', "")
        .replace(f'token = "{TOKEN}"', "")
        .replace(f"[{table}]", f'[{table}]\n{key} = "{value}"')
    )
    with pytest.raises(ConfigError) as error:
        load(write(tmp_path, text))
    found = {k: m for _, k, m in error.value.problems}
    assert found[f"{table}.{key}"] == (
        f"refused: {why}; {WATCH_ONLY}"
    )
    assert value not in str(error.value)


@pytest.mark.parametrize(
    "name", ["seed", "mnemonic", "private_key", "xprv", "wif", "spend_key", "seed_file", "master_privkey"]
)
def test_private_key_names_are_refused(tmp_path, name):
    """A key whose name says it holds private material is refused whatever its value (and wherever)."""
    found = problems(write(tmp_path, MINIMAL.replace("[store]", f'[store]\n{name} = "anything"')))
    assert found == {
        f"store.{name}": "refused: the key name suggests private key material (seed, mnemonic, private key); "
        "watcherd is watch-only and never needs it"
    }
    found = problems(write(tmp_path, MINIMAL + f"{name} = 1\n"))
    assert set(found) == {f"chains.btc.{name}"}


def test_private_material_in_unknown_tables_arrays_and_descriptors(tmp_path, private_material):
    """Refusal does not depend on the schema: nested tables, arrays and descriptors are searched too."""
    xprv, tprv = private_material["xprv"], private_material["tprv"]
    damaged = xprv[:50] + ("A" if xprv[50] != "A" else "B") + xprv[51:]  # checksum broken: still private
    text = MINIMAL + (
        f'extra = ["ok", "{xprv}"]\n'
        f'descriptor = "wpkh([d34db33f/84h/0h/0h]{tprv}/0/*)"\n'
        f'[wallet.backup]\nkey = "{damaged}"\n'
    )
    found = problems(write(tmp_path, text))
    assert found["chains.btc.extra[1]"].startswith("refused: this is an extended PRIVATE key (xprv)")
    assert found["chains.btc.descriptor"].startswith("refused: this is an extended PRIVATE key (tprv)")
    assert found["wallet.backup.key"].startswith("refused: this is an extended PRIVATE key (xprv)")
    assert found["wallet"] == "unknown key"
    assert not any(secret in message for message in found.values() for secret in (xprv, tprv, damaged))


def test_private_material_in_secret_files_is_refused(tmp_path, private_material):
    """A *_file holding a private key (a wrong file picked) is refused too, naming the key and the file."""
    (tmp_path / "xpub").write_text(private_material["zprv"] + "\n")
    (tmp_path / "token").write_text(private_material["mnemonic"] + "\n")
    text = MINIMAL.replace(f'xpub = "{ZPUB}"', 'xpub_file = "xpub"').replace(
        f'token = "{TOKEN}"', 'token_file = "token"'
    )
    found = problems(write(tmp_path, text))
    assert found == {
        "chains.btc.xpub_file": f"refused: {tmp_path / 'xpub'} holds an extended PRIVATE key (zprv); "
        + WATCH_ONLY,
        "api.token_file": f"refused: {tmp_path / 'token'} holds a BIP39 mnemonic (12 words); "
        + WATCH_ONLY,
    }


@pytest.mark.parametrize(
    "token",
    [
        "xprv-is-not-a-key-0123456789",
        "1" * 60,
        "abandon ability able about above absent absorb abstract absurd abuse access",  # 11 words
        "3JtKq8yD3y8FkSVBtH5Pb7xWoUjMjfXsyCH8WSsFzkW9v4fHqX9Z",  # base58, 52 chars, not a WIF checksum
    ],
)
def test_legitimate_values_are_not_refused(tmp_path, token):
    text = MINIMAL.replace("[store]", f'[webhook]\nurl = "https://h.internal/x"\nsecret = "{token}"\n[store]')
    config = load(write(tmp_path, text))
    assert config.webhook is not None and config.webhook.secret == token


# --- the file itself ----------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as error:
        load(tmp_path / "absent.toml")
    assert error.value.problems == [
        (str(tmp_path / "absent.toml"), "(file)", "cannot read: No such file or directory")
    ]


def test_toml_syntax_error(tmp_path):
    path = write(tmp_path, "[store\npath = 1\n")
    with pytest.raises(ConfigError) as error:
        load(path)
    [(file, key, message)] = error.value.problems
    assert (file, key) == (str(path), "(syntax)") and message.startswith("invalid TOML")


def test_tables_must_be_tables(tmp_path):
    found = problems(write(tmp_path, f'store = "x"\nchains = 3\n[api]\ntoken = "{TOKEN}"\n'))
    assert found == {"store": "must be a table", "chains": "must be a table", "store.path": STORE_REQUIRED}


async def test_node_down_after_seconds_bounds_how_long_a_failing_node_is_retried(tmp_path):
    """An unreachable node is retried in place for `node_down_after_seconds`, then the chain counts as down."""
    import socket
    import time

    from watcherd.chains.bitcoin.adapter import BitcoinAdapter
    from watcherd.exceptions import NodeUnavailable

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: every connection is refused
        text = MINIMAL.replace("8332", str(port)).replace('rpc_cookie_file = "bitcoind/.cookie"',
                                                          'rpc_user = "u"\nrpc_password = "p"')
        adapter = BitcoinAdapter(load(write(tmp_path, text + "node_down_after_seconds = 1.5\n")).chains["btc"])
        started = time.monotonic()
        try:
            with pytest.raises(NodeUnavailable):
                await adapter._rpc.call("getblockcount")
        finally:
            await adapter.close()
    assert 0.5 < time.monotonic() - started < 2.5


def test_store_instance_and_lease(tmp_path):
    """The instance name defaults to the host name; a name that could not be shown plainly, or a lease too
    short or too long, is refused."""
    import socket

    config = load(write(tmp_path, MINIMAL))
    assert (config.store.instance, config.store.lease_seconds) == (socket.gethostname(), 6.0)
    config = load(write(tmp_path, MINIMAL.replace('path = "watcherd.sqlite3"',
                                                  'path = "watcherd.sqlite3"\ninstance = "pay-1"\nlease_seconds = 2')))
    assert (config.store.instance, config.store.lease_seconds) == ("pay-1", 2.0)
    found = problems(write(tmp_path, MINIMAL.replace(
        'path = "watcherd.sqlite3"', 'path = "watcherd.sqlite3"\ninstance = "pay 1"\nlease_seconds = 0.5')))
    assert "letters, digits" in found["store.instance"] and "1 to 600" in found["store.lease_seconds"]


def test_chains_get_display_names_for_the_payment_page(tmp_path):
    """A chain's `display_name` names it to the customer; without one, a name from its coin or its EVM chain id,
    never the operator's key for it; a test network is flagged for the page's badge."""
    from harness import eth_account_xpub

    base = MINIMAL.split("[chains.btc]")[0]
    btc = "[chains.btc]" + MINIMAL.split("[chains.btc]")[1]
    eth = f'[chains.{{name}}]\nkind = "ethereum"\nws_url = "ws://127.0.0.1:8546"\nxpub = "{eth_account_xpub()}"\n'
    text = (base + btc.replace("[chains.btc]", "[chains.main-btc]")
            + eth.format(name="l1") + "chain_id = 1\n" + eth.format(name="poly") + "chain_id = 137\n"
            + eth.format(name="dev") + 'chain_id = 31337\ndisplay_name = "Ethereum (devnet)"\n'
            + eth.format(name="odd") + "chain_id = 424242\n")
    labels = load(write(tmp_path, text)).labels
    assert {name: (label.display_name, label.test_network) for name, label in labels.items()} == {
        "main-btc": ("Bitcoin", False), "l1": ("Ethereum", False), "poly": ("Polygon", False),
        "dev": ("Ethereum (devnet)", True), "odd": ("EVM chain 424242", False)}
    regtest = load(write(tmp_path, MINIMAL.replace('network = "mainnet"', 'network = "regtest"').replace(
        ZPUB, Bip84.FromSeed(EXAMPLE_OPERATOR_SEED, Bip84Coins.BITCOIN_TESTNET).Purpose().Coin().Account(0)
        .PublicKey().ToExtended())))
    assert regtest.labels["btc"] == ChainLabel("Bitcoin", True)
    for bad in ('" Bitcoin"', '"' + "x" * 41 + '"', '"Bit\\ncoin"', "7"):
        found = problems(write(tmp_path, MINIMAL + f"display_name = {bad}\n"))
        assert list(found) == ["chains.btc.display_name"], bad
