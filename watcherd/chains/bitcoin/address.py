"""Watch-only address derivation for Bitcoin-family chains, and address <-> scriptPubKey conversion.

watcherd only ever holds an account-level extended PUBLIC key (the `m/84'/0'/0'` level a wallet exports as
xpub/zpub/...). Invoice addresses are `<account>/0/<index>`, the external chain, so the operator's wallet
(Electrum, Sparrow, Bitcoin Core with the matching descriptor) sees every payment without any import.
Private material is refused here, and again, for the whole file, by the config loader.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import operator
from dataclasses import dataclass

import coincurve
from bip_utils import Base58ChecksumError, Base58Decoder, Base58Encoder, Bip32Secp256k1, Hash160
from bip_utils.ecc import Secp256k1, Secp256k1PublicKey

from watcherd.config.private import private_key_kind


@dataclass(frozen=True)
class Network:
    """One coin on one network: what its addresses and its keys look like."""

    coin: str  # "bitcoin" | "litecoin"
    name: str  # "mainnet" | "testnet" | "testnet4" | "signet" | "regtest"
    p2pkh_version: int
    p2sh_version: int
    hrp: str
    bip44_coin_type: int
    uri_scheme: str
    # Litecoin moved P2SH from "3..." to "M..." in 2017; Litecoin Core still decodes the old version (and so
    # do we), but only ever encodes the new one.
    legacy_p2sh_versions: tuple[int, ...] = ()

    @property
    def is_mainnet(self) -> bool:
        return self.name == "mainnet"


# Checked against Bitcoin Core and Litecoin Core 0.21 chainparams.cpp (Litecoin has no signet there).
_NETWORKS = {
    ("bitcoin", "mainnet"): Network("bitcoin", "mainnet", 0, 5, "bc", 0, "bitcoin"),
    ("bitcoin", "testnet"): Network("bitcoin", "testnet", 111, 196, "tb", 1, "bitcoin"),
    ("bitcoin", "testnet4"): Network("bitcoin", "testnet4", 111, 196, "tb", 1, "bitcoin"),
    ("bitcoin", "signet"): Network("bitcoin", "signet", 111, 196, "tb", 1, "bitcoin"),
    ("bitcoin", "regtest"): Network("bitcoin", "regtest", 111, 196, "bcrt", 1, "bitcoin"),
    ("litecoin", "mainnet"): Network("litecoin", "mainnet", 48, 50, "ltc", 2, "litecoin", (5,)),
    ("litecoin", "testnet"): Network("litecoin", "testnet", 111, 58, "tltc", 1, "litecoin", (196,)),
    ("litecoin", "regtest"): Network("litecoin", "regtest", 111, 58, "rltc", 1, "litecoin", (196,)),
}


def network(coin: str, name: str) -> Network:
    try:
        return _NETWORKS[(coin, name)]
    except KeyError:
        known = ", ".join(f"{c}/{n}" for c, n in _NETWORKS)
        raise ValueError(f"unknown coin/network {coin}/{name}; known: {known}") from None


ADDRESS_TYPES = ("p2wpkh", "p2pkh", "p2sh-p2wpkh", "p2tr")


@dataclass(frozen=True)
class _KeyVersion:
    prefix: str
    mainnet: bool
    coins: frozenset[str]
    # The script type a wallet derives from this version; None for the generic xpub/tpub forms, which
    # descriptor wallets use for every script type.
    script: str | None


_BOTH = frozenset({"bitcoin", "litecoin"})
_LTC = frozenset({"litecoin"})

# SLIP-132 extended public key versions (first 4 bytes of the decoded key).
_PUBLIC_VERSIONS = {
    bytes.fromhex("0488b21e"): _KeyVersion("xpub", True, _BOTH, None),
    bytes.fromhex("049d7cb2"): _KeyVersion("ypub", True, _BOTH, "p2sh-p2wpkh"),
    bytes.fromhex("04b24746"): _KeyVersion("zpub", True, _BOTH, "p2wpkh"),
    bytes.fromhex("0295b43f"): _KeyVersion("Ypub", True, _BOTH, "multisig p2sh-p2wsh"),
    bytes.fromhex("02aa7ed3"): _KeyVersion("Zpub", True, _BOTH, "multisig p2wsh"),
    bytes.fromhex("019da462"): _KeyVersion("Ltub", True, _LTC, None),
    bytes.fromhex("01b26ef6"): _KeyVersion("Mtub", True, _LTC, "p2sh-p2wpkh"),
    bytes.fromhex("043587cf"): _KeyVersion("tpub", False, _BOTH, None),
    bytes.fromhex("044a5262"): _KeyVersion("upub", False, _BOTH, "p2sh-p2wpkh"),
    bytes.fromhex("045f1cf6"): _KeyVersion("vpub", False, _BOTH, "p2wpkh"),
    bytes.fromhex("024289ef"): _KeyVersion("Upub", False, _BOTH, "multisig p2sh-p2wsh"),
    bytes.fromhex("02575483"): _KeyVersion("Vpub", False, _BOTH, "multisig p2wsh"),
    bytes.fromhex("0436f6e1"): _KeyVersion("ttub", False, _LTC, None),
}

_XPUB_VERSION = bytes.fromhex("0488b21e")  # what bip_utils' Bip32Secp256k1 parses by default
_EXTENDED_KEY_LEN = 78
_HARDENED = 0x80000000
_TAP_TWEAK_TAG = hashlib.sha256(b"TapTweak").digest()


class AddressDeriver:
    """Derives the receive addresses of one account-level extended public key."""

    def __init__(self, extended_pubkey: str, address_type: str, network: Network):
        if address_type not in ADDRESS_TYPES:
            raise ValueError(
                f"unknown address type {address_type!r}; expected one of {', '.join(ADDRESS_TYPES)}"
            )
        kind = private_key_kind(extended_pubkey)
        if kind is not None:
            raise ValueError(
                f"refused: this is {kind}; watcherd is watch-only and a private key is never accepted, "
                "configure the account's extended public key (xpub/zpub/...) instead"
            )
        try:
            raw = Base58Decoder.CheckDecode(extended_pubkey)
        except (ValueError, Base58ChecksumError):
            raise ValueError("not an extended public key (bad base58 or checksum)") from None
        if len(raw) != _EXTENDED_KEY_LEN:
            raise ValueError(f"not an extended public key (decodes to {len(raw)} bytes, expected 78)")
        version = _PUBLIC_VERSIONS.get(raw[:4])
        if version is None:
            known = ", ".join(v.prefix for v in _PUBLIC_VERSIONS.values())
            raise ValueError(f"unknown extended key version 0x{raw[:4].hex()}; expected one of {known}")
        _check_version_fits(version, address_type, network)
        try:
            account = Bip32Secp256k1.FromExtendedKey(Base58Encoder.CheckEncode(_XPUB_VERSION + raw[4:]))
        except Exception as e:  # bip_utils raises its own families; translate at this edge
            raise ValueError(f"invalid extended public key ({e})") from None
        self.address_type = address_type
        self.network = network
        self.depth = int(account.Depth())
        # The external (receive) chain; change (/1) is the wallet's business, not ours.
        receive = account.ChildKey(0)
        self._receive_key = receive.PublicKey().RawCompressed().ToBytes()
        self._receive_chain_code = receive.ChainCode().ToBytes()

    def derive(self, index: int) -> tuple[str, bytes]:
        """(address, scriptPubKey) of `<account>/0/<index>`."""
        if not 0 <= index < _HARDENED:
            raise ValueError(f"derivation index must be 0 <= index < 2**31, got {index}")
        pubkey = ckd_pub(self._receive_key, self._receive_chain_code, index)
        script = _script_for(pubkey, self.address_type)
        address = script_to_address(script, self.network)
        assert address is not None  # every script _script_for builds has an address form
        return address, script


def ckd_pub(key: bytes, chain_code: bytes, index: int) -> bytes:
    """BIP32's CKDpub for a non-hardened `index`: the child's compressed public key, in one libsecp256k1 tweak
    (bip-utils gets there through point arithmetic in Python objects, at three times the cost per address)."""
    digest = hmac.new(chain_code, key + index.to_bytes(4, "big"), hashlib.sha512).digest()
    # an IL at or above the curve order, or a child at infinity (odds below 2**-127), is refused (ValueError)
    return coincurve.PublicKey(key).add(digest[:32]).format(compressed=True)


def _check_version_fits(version: _KeyVersion, address_type: str, network: Network) -> None:
    if version.mainnet != network.is_mainnet:
        expected = (
            "a mainnet key (xpub/ypub/zpub...)" if network.is_mainnet else "a testnet key (tpub/upub/vpub...)"
        )
        raise ValueError(
            f"{version.prefix} is a {'mainnet' if version.mainnet else 'testnet'} key but this chain is "
            f"{network.coin} {network.name}; expected {expected}"
        )
    if network.coin not in version.coins:
        coins = "/".join(sorted(version.coins))
        raise ValueError(f"{version.prefix} is a {coins} key, this chain is {network.coin}")
    if version.script is not None and version.script != address_type:
        # A wallet that imports this key watches only its own script type: addresses of another type would
        # receive money the operator's wallet never shows.
        raise ValueError(
            f"{version.prefix} is a {version.script} key but address_type is {address_type}; wallets "
            f"importing this {version.prefix} would not see those addresses (use the key exported for "
            f"{address_type}, or the generic xpub/tpub form)"
        )


def _script_for(pubkey: bytes, address_type: str) -> bytes:
    if address_type == "p2wpkh":
        return b"\x00\x14" + Hash160.QuickDigest(pubkey)
    if address_type == "p2pkh":
        return b"\x76\xa9\x14" + Hash160.QuickDigest(pubkey) + b"\x88\xac"
    if address_type == "p2sh-p2wpkh":
        redeem = b"\x00\x14" + Hash160.QuickDigest(pubkey)
        return b"\xa9\x14" + Hash160.QuickDigest(redeem) + b"\x87"
    if address_type == "p2tr":
        return b"\x51\x20" + _bip86_output_key(pubkey)
    raise ValueError(f"unknown address type {address_type!r}")


def _bip86_output_key(pubkey: bytes) -> bytes:
    """BIP86: key-path-only taproot, Q = lift_x(P) + H_TapTweak(x(P))·G, with no script tree."""
    x_only = pubkey[1:]
    internal = Secp256k1PublicKey.FromBytes(b"\x02" + x_only)  # lift_x: the even-y point with that x
    tweak = int.from_bytes(hashlib.sha256(_TAP_TWEAK_TAG + _TAP_TWEAK_TAG + x_only).digest(), "big")
    output = internal.Point() + tweak * Secp256k1.Generator()
    return output.X().to_bytes(32, "big")


def address_to_script(address: str, network: Network) -> bytes:
    """The scriptPubKey an address pays to; ValueError if it is invalid or belongs to another network."""
    where = f"{network.coin} {network.name}"
    if address.lower().startswith(network.hrp + "1"):
        version, program = _segwit_decode(network.hrp, address)
        return bytes([version + 0x50 if version else 0, len(program)]) + program
    try:
        raw = Base58Decoder.CheckDecode(address)
    except (ValueError, Base58ChecksumError):
        raise ValueError(f"not a valid {where} address (bad encoding or checksum)") from None
    if len(raw) != 21:
        raise ValueError(f"not a valid {where} address (wrong length)")
    if raw[0] == network.p2pkh_version:
        return b"\x76\xa9\x14" + raw[1:] + b"\x88\xac"
    if raw[0] == network.p2sh_version or raw[0] in network.legacy_p2sh_versions:
        return b"\xa9\x14" + raw[1:] + b"\x87"
    raise ValueError(f"not a {where} address (version byte {raw[0]})")


def script_to_address(script: bytes, network: Network) -> str | None:
    """The address form of a scriptPubKey, or None for scripts that have none (bare multisig, OP_RETURN)."""
    if len(script) == 25 and script[:3] == b"\x76\xa9\x14" and script[23:] == b"\x88\xac":
        return Base58Encoder.CheckEncode(bytes([network.p2pkh_version]) + script[3:23])
    if len(script) == 23 and script[:2] == b"\xa9\x14" and script[22] == 0x87:
        return Base58Encoder.CheckEncode(bytes([network.p2sh_version]) + script[2:22])
    if (
        4 <= len(script) <= 42
        and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
        and script[1] == len(script) - 2
    ):
        version = script[0] - 0x50 if script[0] else 0
        program = script[2:]
        if version == 0 and len(program) not in (20, 32):
            return None
        return _segwit_encode(network.hrp, version, program)
    return None


# Bech32 (BIP173) and bech32m (BIP350), following the BIPs' reference code. Written out rather than taken from
# bip_utils because its decoder skips the 90-character limit and the bech32-vs-bech32m-by-version rule.
_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_CONST = 1
_BECH32M_CONST = 0x2BC830A3


_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
# the reference code's inner loop (XOR in generator[i] for each bit i of the top five bits), done once per value
_TOP = tuple(functools.reduce(operator.xor, (g for i, g in enumerate(_GENERATOR) if top >> i & 1), 0)
             for top in range(32))


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        chk = (chk & 0x1FFFFFF) << 5 ^ value ^ _TOP[chk >> 25]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int] | None:
    acc = bits = 0
    out = []
    max_value = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & max_value):
        return None
    return out


def _segwit_encode(hrp: str, version: int, program: bytes) -> str:
    data = [version] + (_convert_bits(program, 8, 5, True) or [])
    const = _BECH32_CONST if version == 0 else _BECH32M_CONST
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ const
    checksum = [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in data + checksum)


def _segwit_decode(hrp: str, address: str) -> tuple[int, bytes]:
    if address.lower() != address and address.upper() != address:
        raise ValueError("invalid segwit address (mixed case)")
    address = address.lower()
    separator = address.rfind("1")
    if len(address) > 90 or separator < 1 or separator + 7 > len(address):
        raise ValueError("invalid segwit address (bad length)")
    if address[:separator] != hrp:
        raise ValueError(f"invalid segwit address (expected prefix {hrp}1)")
    if any(c not in _CHARSET for c in address[separator + 1 :]):
        raise ValueError("invalid segwit address (bad character)")
    data = [_CHARSET.index(c) for c in address[separator + 1 :]]
    const = _polymod(_hrp_expand(hrp) + data)
    if const not in (_BECH32_CONST, _BECH32M_CONST):
        raise ValueError("invalid segwit address (bad checksum)")
    data = data[:-6]
    if not data or data[0] > 16:
        raise ValueError("invalid segwit address (bad witness version)")
    version = data[0]
    # BIP350: version 0 must use bech32, every later version bech32m; the other one is a typo'd address.
    if (version == 0) != (const == _BECH32_CONST):
        raise ValueError("invalid segwit address (wrong checksum variant for its witness version)")
    program = _convert_bits(data[1:], 5, 8, False)
    if program is None or not 2 <= len(program) <= 40 or (version == 0 and len(program) not in (20, 32)):
        raise ValueError("invalid segwit address (bad witness program)")
    return version, bytes(program)
