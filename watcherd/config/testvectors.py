"""Public test-vector keys: extended public keys whose seed is printed in specifications and test suites.

Money paid to one of them can be swept by anyone who read the same page, so they are refused on every network
that carries value; on a test network (regtest, testnet, signet, stagenet, a known EVM test chain) they are fine
and tests use them. Keys are compared by their public key, so every encoding of one (xpub, zpub, tpub...) is
caught.
"""

from __future__ import annotations

from functools import cache

from bip_utils import Base58ChecksumError, Base58Decoder

# Networks without value: a chain table's `network`, or an EVM chain's id (config names it "chain-id-<n>").
TEST_NETWORKS = frozenset({"testnet", "testnet4", "signet", "regtest", "stagenet"})
# anvil/hardhat, geth --dev/ganache, Sepolia, Holesky, Hoodi, Goerli, and the Sepolia-based L2s.
TEST_CHAIN_IDS = frozenset({31337, 1337, 11155111, 17000, 560048, 5, 80002, 84532, 421614, 11155420})

# The mnemonics every wallet's test suite uses (BIP39 test vectors, Trezor's, Hardhat and Anvil's default).
_MNEMONICS = (
    " ".join(["abandon"] * 11 + ["about"]),
    " ".join(["abandon"] * 23 + ["art"]),
    " ".join(["all"] * 12),
    " ".join(["test"] * 11 + ["junk"]),
)
_PURPOSES = (44, 49, 84, 86)
_COINS = (0, 1, 2, 60)  # bitcoin, every testnet, litecoin, ethereum
# BIP32's own test vectors: each seed and the paths its specification lists.
_BIP32_VECTORS = (
    ("000102030405060708090a0b0c0d0e0f",
     ("m", "m/0'", "m/0'/1", "m/0'/1/2'", "m/0'/1/2'/2", "m/0'/1/2'/2/1000000000")),
    ("fffcf9f6f3f0edeae7e4e1dedbd8d5d2cfccc9c6c3c0bdbab7b4b1aeaba8a5a29f9c999693908d8a8784817e7b7875726f6c696663605d5a"
     "5754514e4b484542",
     ("m", "m/0", "m/0/2147483647'", "m/0/2147483647'/1", "m/0/2147483647'/1/2147483646'",
      "m/0/2147483647'/1/2147483646'/2")),
    ("4b381541583be4423346c643850da4b320e46a87ae3d2a4e6da11eba819cd4acba45d239319ac14f863b8d5ab5a0d0c64d2e8a1e7d1457d"
     "f2e5a3c51c73235be", ("m", "m/0'")),
    ("3ddd5602285899a946114506157c7997e5444528f3003f6134712147db19b678", ("m", "m/0'", "m/0'/1'")),
)
_EXTENDED_KEY_LEN = 78


def is_test_network(network_name: str) -> bool:
    """`network_name` (a chain config's network.name) carries no value: regtest, testnet, a test EVM chain..."""
    if network_name.startswith("chain-id-"):
        return network_name.removeprefix("chain-id-").isdigit() and int(network_name[9:]) in TEST_CHAIN_IDS
    return network_name in TEST_NETWORKS


def public_test_vector(text: str) -> str | None:
    """Where `text`, an extended public key, is published ('the mnemonic "abandon ... about" at m/84'/0'/0''),
    or None."""
    try:
        raw = Base58Decoder.CheckDecode(text.strip())
    except (ValueError, Base58ChecksumError):
        return None
    if len(raw) != _EXTENDED_KEY_LEN:
        return None
    return _known_keys().get(raw[45:78])


@cache
def _known_keys() -> dict[bytes, str]:
    """Compressed public key -> where it is published; derived once, on the first extended key checked."""
    from bip_utils import Bip32Slip10Secp256k1, Bip39SeedGenerator

    known: dict[bytes, str] = {}
    for mnemonic in _MNEMONICS:
        words = mnemonic.split()
        shown = f'"{words[0]} ... {words[-1]}"' if len(set(words)) > 1 else f'"{words[0]} x{len(words)}"'
        root = Bip32Slip10Secp256k1.FromSeed(Bip39SeedGenerator(mnemonic).Generate())
        for purpose in _PURPOSES:
            for coin in _COINS:
                path = f"m/{purpose}'/{coin}'/0'"
                known[root.DerivePath(path).PublicKey().RawCompressed().ToBytes()] = f"the mnemonic {shown} at {path}"
    for number, (seed, paths) in enumerate(_BIP32_VECTORS, start=1):
        root = Bip32Slip10Secp256k1.FromSeed(bytes.fromhex(seed))
        for path in paths:
            key = root if path == "m" else root.DerivePath(path)
            known[key.PublicKey().RawCompressed().ToBytes()] = f"BIP32 test vector {number} at {path}"
    return known
