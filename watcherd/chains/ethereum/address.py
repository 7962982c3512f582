"""Ethereum addresses: EIP-55 checksums, xpub -> address derivation (m/44'/60'/0'/0/i), EIP-681 URIs.

The account-level xpub (m/44'/60'/0') is what MetaMask-style and hardware wallets derive from; invoice i gets
the address at /0/i, so the operator's own wallet sees and sweeps the same addresses.
"""

from __future__ import annotations

import re

from Crypto.Hash import keccak

from watcherd.core.money import to_decimal_string

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
TRANSFER_SELECTOR = bytes.fromhex("a9059cbb")  # transfer(address,uint256)


def keccak256(data: bytes) -> bytes:
    return keccak.new(data=data, digest_bits=256).digest()


# keccak256("Transfer(address,address,uint256)"): topic 0 of every ERC-20 Transfer event
TRANSFER_TOPIC = "0x" + keccak256(b"Transfer(address,address,uint256)").hex()


def to_checksum(address: bytes) -> str:
    """EIP-55: the hex digit is upper case where the keccak of the lower-case hex has a nibble >= 8."""
    lower = address.hex()
    digest = keccak256(lower.encode()).hex()
    return "0x" + "".join(c.upper() if int(d, 16) >= 8 else c for c, d in zip(lower, digest[:40], strict=True))


def parse_address(text: str, *, strict: bool = True) -> bytes:
    """20 bytes from `0x…40 hex`; `strict`: a mixed-case address must carry a valid EIP-55 checksum (an all
    lower- or all upper-case one has none to check)."""
    if not isinstance(text, str) or not _HEX_ADDRESS.fullmatch(text):
        raise ValueError("must be 0x followed by 40 hex digits")
    raw = bytes.fromhex(text[2:])
    body = text[2:]
    if strict and body != body.lower() and body != body.upper() and to_checksum(raw) != text:
        raise ValueError(f"bad EIP-55 checksum (did you mean {to_checksum(raw)}?)")
    return raw


class EthDeriver:
    """Addresses m/44'/60'/0'/0/i from the account's xpub."""

    def __init__(self, xpub: str):
        from bip_utils import Base58ChecksumError, Bip32KeyError, Bip32Secp256k1

        try:
            account = Bip32Secp256k1.FromExtendedKey(xpub)
        except Base58ChecksumError:
            raise ValueError("not an extended public key (bad base58 checksum: a character is wrong or missing)") \
                from None
        except (ValueError, Bip32KeyError) as exc:
            raise ValueError(f"not an extended public key: {exc}") from None
        if not account.IsPublicOnly():
            raise ValueError("is a private key; watcherd is watch-only")
        if account.Depth().ToInt() != 3:
            raise ValueError(
                f"must be the account-level key (m/44'/60'/0', depth 3), this one has depth {account.Depth().ToInt()}"
            )
        self._external = account.ChildKey(0)

    def derive(self, index: int) -> tuple[str, bytes]:
        from bip_utils import EthAddr

        address = EthAddr.EncodeKey(self._external.ChildKey(index).PublicKey().KeyObject())
        return address, bytes.fromhex(address[2:])


def payment_uri(address: str, amount: int, chain_id: int, token: str | None = None, decimals: int = 18) -> str:
    """EIP-681. Native: `ethereum:<addr>@<chain>?value=<wei>`; ERC-20: a call of the token's `transfer`:
    `ethereum:<token>@<chain>/transfer?address=<addr>&uint256=<atomic>`. Integers, never exponents: wallets
    disagree on `2.014e18`."""
    del decimals  # EIP-681 amounts are atomic; kept in the signature for symmetry with other chains
    if token is None:
        return f"ethereum:{address}@{chain_id}?value={amount}"
    return f"ethereum:{token}@{chain_id}/transfer?address={address}&uint256={amount}"


def describe(amount: int, decimals: int) -> str:
    return to_decimal_string(amount, decimals)
