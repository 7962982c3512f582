"""Watch-only address derivation and address/script conversion (watcherd.chains.bitcoin.address).

The vectors are the published BIP44/49/84/86 ones for the mnemonic "abandon ... about". Private keys appear
only here, derived from that public test mnemonic, to prove the module refuses them.
"""

import time

import pytest
from bip_utils import (
    Base58Decoder,
    Base58Encoder,
    Bip39SeedGenerator,
    Bip44,
    Bip44Changes,
    Bip44Coins,
    Bip49,
    Bip49Coins,
    Bip84,
    Bip84Coins,
    Bip86,
    Bip86Coins,
)
from hypothesis import given
from hypothesis import strategies as st

from watcherd.chains.bitcoin.address import (
    ADDRESS_TYPES,
    AddressDeriver,
    address_to_script,
    network,
    script_to_address,
)
from watcherd.config.private import private_key_kind

MNEMONIC = " ".join(["abandon"] * 11 + ["about"])

# Account-level public keys, as printed in the BIPs.
BIP84_ZPUB = (
    "zpub6rFR7y4Q2AijBEqTUquhVz398htDFrtymD9xYYfG1m4wAcvPhXNfE3EfH1r1ADqtfSdVCToUG868RvUUkgDKf31mGDtKsAYz2oz2AGutZYs"
)
BIP49_YPUB = (
    "ypub6Ww3ibxVfGzLrAH1PNcjyAWenMTbbAosGNB6VvmSEgytSER9azLDWCxoJwW7Ke7icmizBMXrzBx9979FfaHxHcrArf3zbeJJJUZPf663zsP"
)
BIP49_UPUB = (
    "upub5EFU65HtV5TeiSHmZZm7FUffBGy8UKeqp7vw43jYbvZPpoVsgU93oac7Wk3u6moKegAEWtGNF8DehrnHtv21XXEMYRUocHqguyjknFHYfgY"
)
BIP86_XPUB = (
    "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ"
)
BIP44_XPUB = (
    "xpub6BosfCnifzxcFwrSzQiqu2DBVTshkCXacvNsWGYJVVhhawA7d4R5WSWGFNbi8Aw6ZRc1brxMyWMzG3DSSSSoekkudhUd9yLb6qx39T9nMdj"
)

BTC = network("bitcoin", "mainnet")
BTC_TEST = network("bitcoin", "testnet")
BTC_REGTEST = network("bitcoin", "regtest")
LTC = network("litecoin", "mainnet")
LTC_TEST = network("litecoin", "testnet")
LTC_REGTEST = network("litecoin", "regtest")


@pytest.fixture(scope="module")
def seed() -> bytes:
    return Bip39SeedGenerator(MNEMONIC).Generate()


def account(seed: bytes, bip, coin):
    return bip.FromSeed(seed, coin).Purpose().Coin().Account(0)


def receive_address(acc, index: int) -> str:
    return acc.Change(Bip44Changes.CHAIN_EXT).AddressIndex(index).PublicKey().ToAddress()


def with_version(extended_key: str, version_hex: str) -> str:
    return Base58Encoder.CheckEncode(bytes.fromhex(version_hex) + Base58Decoder.CheckDecode(extended_key)[4:])


# --- published vectors --------------------------------------------------------------------------------------


def test_bip84_vectors():
    """The zpub of the BIP84 test mnemonic derives the BIP's receive addresses and their P2WPKH scripts."""
    deriver = AddressDeriver(BIP84_ZPUB, "p2wpkh", BTC)
    assert deriver.derive(0) == (
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
        bytes.fromhex("0014c0cebcd6c3d3ca8c75dc5ec62ebe55330ef910e2"),
    )
    assert deriver.derive(1)[0] == "bc1qnjg0jd8228aq7egyzacy8cys3knf9xvrerkf9g"


def test_bip84_zpub_is_the_account_key_of_the_mnemonic(seed):
    """Guards the test itself: the vector zpub is m/84'/0'/0' of the mnemonic, so /0/i matches bip_utils."""
    acc = account(seed, Bip84, Bip84Coins.BITCOIN)
    assert acc.PublicKey().ToExtended() == BIP84_ZPUB
    deriver = AddressDeriver(BIP84_ZPUB, "p2wpkh", BTC)
    assert [deriver.derive(i)[0] for i in range(5)] == [receive_address(acc, i) for i in range(5)]


def test_bip49_vectors():
    """ypub (mainnet) and the BIP's own upub (testnet) derive P2SH-P2WPKH addresses."""
    address, script = AddressDeriver(BIP49_YPUB, "p2sh-p2wpkh", BTC).derive(0)
    assert address == "37VucYSaXLCAsxYyAPfbSi9eh4iEcbShgf"
    assert script == bytes.fromhex("a9143fb6e95812e57bb4691f9a4a628862a61a4f769b87")
    testnet = AddressDeriver(BIP49_UPUB, "p2sh-p2wpkh", BTC_TEST)
    assert testnet.derive(0)[0] == "2Mww8dCYPUpKHofjgcXcBCEGmniw9CoaiD2"


def test_bip86_vectors():
    """Taproot is BIP86 key-path only: the tweak of the BIP's vectors, bech32m encoded."""
    deriver = AddressDeriver(BIP86_XPUB, "p2tr", BTC)
    address, script = deriver.derive(0)
    assert address == "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr"
    assert script == bytes.fromhex("5120a60869f0dbcf1dc659c9cecbaf8050135ea9e8cdc487053f1dc6880949dc684c")
    assert deriver.derive(1)[0] == "bc1p4qhjn9zdvkux4e44uhx8tc55attvtyu358kutcqkudyccelu0was9fqzwh"


def test_bip44_p2pkh_vector():
    address, script = AddressDeriver(BIP44_XPUB, "p2pkh", BTC).derive(0)
    assert address == "1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA"
    assert script == bytes.fromhex("76a914d986ed01b7a22225a70edbf2ba7cfb63a15cb3aa88ac")


# --- litecoin -----------------------------------------------------------------------------------------------


def test_litecoin_p2wpkh_matches_bip_utils(seed):
    """m/84'/2'/0' of the test mnemonic: our derivation agrees with bip_utils' own Litecoin classes."""
    acc = account(seed, Bip84, Bip84Coins.LITECOIN)
    deriver = AddressDeriver(acc.PublicKey().ToExtended(), "p2wpkh", LTC)
    assert deriver.derive(0)[0] == "ltc1qjmxnz78nmc8nq77wuxh25n2es7rzm5c2rkk4wh"
    assert [deriver.derive(i)[0] for i in range(5)] == [receive_address(acc, i) for i in range(5)]


def test_litecoin_p2pkh_and_p2sh_match_bip_utils(seed):
    """Litecoin's own version bytes: L... for P2PKH, M... (50, not 5) for P2SH; Ltub/Mtub are accepted."""
    bip44 = account(seed, Bip44, Bip44Coins.LITECOIN)
    xpub = bip44.PublicKey().ToExtended()
    assert AddressDeriver(xpub, "p2pkh", LTC).derive(0)[0] == "LUWPbpM43E2p7ZSh8cyTBEkvpHmr3cB8Ez"
    ltub = with_version(xpub, "019da462")
    assert ltub.startswith("Ltub")
    assert AddressDeriver(ltub, "p2pkh", LTC).derive(1)[0] == receive_address(bip44, 1)

    bip49 = account(seed, Bip49, Bip49Coins.LITECOIN)
    mtub = with_version(bip49.PublicKey().ToExtended(), "01b26ef6")
    assert mtub.startswith("Mtub")
    assert AddressDeriver(mtub, "p2sh-p2wpkh", LTC).derive(0)[0] == "M7wtsL7wSHDBJVMWWhtQfTMSYYkyooAAXM"
    assert receive_address(bip49, 0) == "M7wtsL7wSHDBJVMWWhtQfTMSYYkyooAAXM"


def test_litecoin_testnet_ttub(seed):
    acc = account(seed, Bip84, Bip84Coins.LITECOIN_TESTNET)
    ttub = acc.PublicKey().ToExtended()
    assert ttub.startswith("ttub")
    assert AddressDeriver(ttub, "p2wpkh", LTC_TEST).derive(0)[0] == receive_address(acc, 0)


# --- regtest / testnet --------------------------------------------------------------------------------------


def test_regtest_prefixes(seed):
    """Test-network keys serve testnet, signet and regtest; only the address prefix differs."""
    vpub = account(seed, Bip84, Bip84Coins.BITCOIN_TESTNET).PublicKey().ToExtended()
    testnet_address, testnet_script = AddressDeriver(vpub, "p2wpkh", BTC_TEST).derive(0)
    regtest_address, regtest_script = AddressDeriver(vpub, "p2wpkh", BTC_REGTEST).derive(0)
    ltc_address, ltc_script = AddressDeriver(vpub, "p2wpkh", LTC_REGTEST).derive(0)
    assert testnet_address == "tb1q6rz28mcfaxtmd6v789l9rrlrusdprr9pqcpvkl"
    assert regtest_address == "bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk"
    assert ltc_address.startswith("rltc1q")
    assert testnet_script == regtest_script == ltc_script
    tpub = account(seed, Bip86, Bip86Coins.BITCOIN_TESTNET).PublicKey().ToExtended()
    assert AddressDeriver(tpub, "p2tr", BTC_REGTEST).derive(0)[0].startswith("bcrt1p")
    assert AddressDeriver(tpub, "p2pkh", BTC_REGTEST).derive(0)[0][0] in "mn"
    assert AddressDeriver(tpub, "p2sh-p2wpkh", LTC_REGTEST).derive(0)[0].startswith("Q")  # version 58


# --- refusals -----------------------------------------------------------------------------------------------


def private_keys(seed) -> dict[str, str]:
    return {
        "xprv": account(seed, Bip44, Bip44Coins.BITCOIN).PrivateKey().ToExtended(),
        "zprv": account(seed, Bip84, Bip84Coins.BITCOIN).PrivateKey().ToExtended(),
        "tprv": account(seed, Bip86, Bip86Coins.BITCOIN_TESTNET).PrivateKey().ToExtended(),
        "vprv": account(seed, Bip84, Bip84Coins.BITCOIN_TESTNET).PrivateKey().ToExtended(),
        "ttpv": account(seed, Bip84, Bip84Coins.LITECOIN_TESTNET).PrivateKey().ToExtended(),
    }


@pytest.mark.parametrize("prefix", ["xprv", "zprv", "tprv", "vprv", "ttpv"])
def test_extended_private_keys_are_refused(seed, prefix):
    """The daemon is watch-only: an extended private key is refused, whatever network it is for."""
    key = private_keys(seed)[prefix]
    assert key.startswith(prefix)
    for net in (BTC, BTC_REGTEST, LTC):
        with pytest.raises(ValueError, match="refused.*PRIVATE key") as error:
            AddressDeriver(key, "p2wpkh", net)
        assert key not in str(error.value)


def test_private_key_under_a_public_version_is_refused(seed):
    """Version bytes lie easily; BIP32's private-key marker (key data starting 0x00) does not."""
    disguised = with_version(private_keys(seed)["zprv"], "04b24746")
    assert disguised.startswith("zpub")
    with pytest.raises(ValueError, match=r"refused: .*PRIVATE key \(zpub prefix, private key data\)"):
        AddressDeriver(disguised, "p2wpkh", BTC)


def test_private_key_kind(seed):
    acc = account(seed, Bip84, Bip84Coins.BITCOIN)
    wif = acc.Change(Bip44Changes.CHAIN_EXT).AddressIndex(0).PrivateKey().ToWif()
    assert private_key_kind(private_keys(seed)["xprv"]) == "an extended PRIVATE key (xprv)"
    assert private_key_kind(wif) == "a WIF private key"
    assert private_key_kind(BIP84_ZPUB) is None
    assert private_key_kind("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu") is None
    assert private_key_kind("1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA") is None


@pytest.mark.parametrize(
    ("key", "address_type", "net", "message"),
    [
        (BIP84_ZPUB, "p2wpkh", BTC_REGTEST, "mainnet key but this chain is bitcoin regtest"),
        (BIP84_ZPUB, "p2wpkh", BTC_TEST, "mainnet key"),
        (BIP49_UPUB, "p2sh-p2wpkh", BTC, "testnet key but this chain is bitcoin mainnet"),
        (with_version(BIP44_XPUB, "019da462"), "p2pkh", BTC, "Ltub is a litecoin key"),
        (BIP84_ZPUB, "p2pkh", BTC, "zpub is a p2wpkh key but address_type is p2pkh"),
        (BIP49_YPUB, "p2wpkh", BTC, "ypub is a p2sh-p2wpkh key"),
        (with_version(BIP84_ZPUB, "02aa7ed3"), "p2wpkh", BTC, "Zpub is a multisig"),
    ],
)
def test_key_for_another_network_or_script_is_refused(key, address_type, net, message):
    """A key from the wrong network, coin or script type would hand out addresses the wallet never sees."""
    with pytest.raises(ValueError, match=message):
        AddressDeriver(key, address_type, net)


def test_generic_xpub_serves_every_address_type():
    for address_type in ADDRESS_TYPES:
        assert AddressDeriver(BIP44_XPUB, address_type, BTC).derive(0)[0]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (BIP84_ZPUB[:-1] + ("a" if BIP84_ZPUB[-1] != "a" else "b"), "bad base58 or checksum"),
        ("not a key", "bad base58"),
        (Base58Encoder.CheckEncode(bytes.fromhex("04b24746") + bytes(40)), "decodes to 44 bytes"),
        (Base58Encoder.CheckEncode(bytes.fromhex("deadbeef") + bytes(41) + b"\x02" + bytes(32)), "unknown"),
    ],
)
def test_malformed_keys(key, message):
    with pytest.raises(ValueError, match=message):
        AddressDeriver(key, "p2wpkh", BTC)


def test_unknown_address_type():
    with pytest.raises(ValueError, match="unknown address type"):
        AddressDeriver(BIP84_ZPUB, "p2wsh", BTC)


def test_derive_index_range():
    """Only non-hardened indexes exist below a public key."""
    deriver = AddressDeriver(BIP84_ZPUB, "p2wpkh", BTC)
    assert deriver.derive(2**31 - 1)[0].startswith("bc1q")
    for index in (-1, 2**31):
        with pytest.raises(ValueError, match="index"):
            deriver.derive(index)


def test_network_lookup():
    assert (LTC.p2pkh_version, LTC.p2sh_version, LTC.hrp, LTC.bip44_coin_type) == (48, 50, "ltc", 2)
    assert (LTC_TEST.p2sh_version, LTC_TEST.hrp, LTC_REGTEST.hrp) == (58, "tltc", "rltc")
    assert network("bitcoin", "signet").hrp == "tb"
    with pytest.raises(ValueError, match="unknown coin/network litecoin/signet"):
        network("litecoin", "signet")
    with pytest.raises(ValueError, match="unknown coin/network"):
        network("dogecoin", "mainnet")


def test_derivation_speed():
    """Tests and invoice bursts derive many addresses: at least 1,000 per second."""
    deriver = AddressDeriver(BIP84_ZPUB, "p2wpkh", BTC)
    best = float("inf")
    for round_ in range(3):
        start = time.perf_counter()
        for i in range(1000):
            deriver.derive(round_ * 1000 + i)
        best = min(best, time.perf_counter() - start)
    assert best < 1.0


# --- address <-> script -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "net", "script_hex"),
    [
        # BIP173 / BIP350 valid vectors
        ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", BTC, "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
        (
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            BTC_TEST,
            "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
        ),
        (
            "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
            BTC,
            "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
        ),
        ("BC1SW50QGDZ25J", BTC, "6002751e"),
        ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", BTC, "5210751e76e8199196d454941c45d1b3a323"),
        (
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
            BTC,
            "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
        ),
        ("1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA", BTC, "76a914d986ed01b7a22225a70edbf2ba7cfb63a15cb3aa88ac"),
        ("37VucYSaXLCAsxYyAPfbSi9eh4iEcbShgf", BTC, "a9143fb6e95812e57bb4691f9a4a628862a61a4f769b87"),
        ("ltc1qjmxnz78nmc8nq77wuxh25n2es7rzm5c2rkk4wh", LTC, "001496cd3178f3de0f307bcee1aeaa4d5987862dd30a"),
        ("M7wtsL7wSHDBJVMWWhtQfTMSYYkyooAAXM", LTC, None),
        ("LUWPbpM43E2p7ZSh8cyTBEkvpHmr3cB8Ez", LTC, None),
    ],
)
def test_address_to_script_round_trip(address, net, script_hex):
    script = address_to_script(address, net)
    if script_hex is not None:
        assert script.hex() == script_hex
    bech32 = address.lower().startswith(net.hrp + "1")
    assert script_to_address(script, net) == (address.lower() if bech32 else address)


def test_litecoin_legacy_p2sh_is_accepted_and_rewritten():
    """Litecoin Core still decodes the pre-2017 "3..." P2SH form; we re-encode it as "M..."."""
    script = address_to_script("M7wtsL7wSHDBJVMWWhtQfTMSYYkyooAAXM", LTC)
    legacy = Base58Encoder.CheckEncode(b"\x05" + script[2:22])
    assert legacy.startswith("3")
    assert address_to_script(legacy, LTC) == script
    assert script_to_address(script, LTC) == "M7wtsL7wSHDBJVMWWhtQfTMSYYkyooAAXM"


@pytest.mark.parametrize(
    ("address", "net"),
    [
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", BTC),  # bad checksum
        ("bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd", BTC),  # v1 with bech32 checksum
        ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", BTC),  # v0 with bech32m checksum
        ("BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL", BTC),  # v16 with bech32 checksum
        ("bc1gmk9yu", BTC),  # empty data
        ("bc1rw5uspcuh", BTC),  # 1-byte program
        ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", BTC),  # v0 with a 16-byte program
        ("bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4", BTC),  # 'o' is not bech32
        ("bc1QW508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4", BTC),  # mixed case
        ("1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabB", BTC),  # base58 checksum
        ("1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeab0", BTC),  # '0' is not base58
        ("", BTC),
        ("tb1q6rz28mcfaxtmd6v789l9rrlrusdprr9pqcpvkl", BTC),  # testnet address on mainnet
        ("bcrt1q6rz28mcfaxtmd6v789l9rrlrusdprr9pz3cppk", BTC_TEST),  # regtest hrp on testnet
        ("bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu", LTC),  # bitcoin address on litecoin
        ("1LqBGSKuX5yYUonjxT5qGfpUsXKYYWeabA", LTC),
        ("LUWPbpM43E2p7ZSh8cyTBEkvpHmr3cB8Ez", BTC),
        ("2Mww8dCYPUpKHofjgcXcBCEGmniw9CoaiD2", BTC),
        ("mkpZhYtJu2r87Js3pDiWJDmPte2NRZ8bJV", BTC),
    ],
)
def test_invalid_or_foreign_addresses(address, net):
    with pytest.raises(ValueError):
        address_to_script(address, net)


def test_script_without_address():
    assert script_to_address(b"", BTC) is None
    assert script_to_address(bytes.fromhex("6a0401020304"), BTC) is None  # OP_RETURN
    assert script_to_address(bytes.fromhex("0010" + "00" * 16), BTC) is None  # v0 must be 20 or 32 bytes
    assert script_to_address(bytes.fromhex("51"), BTC) is None


@given(
    kind=st.sampled_from(["p2pkh", "p2sh", "v0-20", "v0-32", "v1-32", "vN"]),
    data=st.data(),
    net=st.sampled_from([BTC, BTC_TEST, BTC_REGTEST, LTC, LTC_TEST, LTC_REGTEST]),
)
def test_script_address_round_trip_property(kind, data, net):
    """Every script with an address form survives script -> address -> script on every network."""
    if kind == "p2pkh":
        script = b"\x76\xa9\x14" + data.draw(st.binary(min_size=20, max_size=20)) + b"\x88\xac"
    elif kind == "p2sh":
        script = b"\xa9\x14" + data.draw(st.binary(min_size=20, max_size=20)) + b"\x87"
    elif kind == "v0-20":
        script = b"\x00\x14" + data.draw(st.binary(min_size=20, max_size=20))
    elif kind == "v0-32":
        script = b"\x00\x20" + data.draw(st.binary(min_size=32, max_size=32))
    elif kind == "v1-32":
        script = b"\x51\x20" + data.draw(st.binary(min_size=32, max_size=32))
    else:
        program = data.draw(st.binary(min_size=2, max_size=40))
        script = bytes([data.draw(st.integers(0x52, 0x60)), len(program)]) + program
    address = script_to_address(script, net)
    assert address is not None
    assert address_to_script(address, net) == script
