"""Refusing private key material: watcherd is watch-only, so a key that can spend is an error wherever it appears.

The whole parsed document is scanned before any table is read, whatever the key is called; secret files are
checked again when read (reader.Table.secret). Chain kinds use `private_key_kind` to refuse a private key
pasted where their public key belongs.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from typing import TYPE_CHECKING

from bip_utils import Base58ChecksumError, Base58Decoder

if TYPE_CHECKING:
    from watcherd.config.reader import Context

WATCH_ONLY = ("watcherd is watch-only: configure the account's xpub/zpub (Monero: the private view key and the "
              "primary address) instead")
_PRIVATE_KEY_NAME = re.compile(r"seed|mnemonic|private|privkey|prv|wif|spend_?key|entropy", re.IGNORECASE)
_BASE58_RUN = re.compile(r"[1-9A-HJ-NP-Za-km-z]{50,}")
# A damaged xprv (a typo breaks its checksum) is still private material.
_PRIVATE_PREFIX = re.compile(
    r"(?<![1-9A-HJ-NP-Za-km-z])(?:[xyztuvYZUV]prv|Ltpv|Mtpv|ttpv)[1-9A-HJ-NP-Za-km-z]{60,}"
)

# The private counterparts of the SLIP-132 public versions (first 4 bytes of the decoded key): recognised
# only to refuse them with a message that says why.
PRIVATE_EXTENDED_KEY_VERSIONS = {
    bytes.fromhex(v): prefix
    for v, prefix in [
        ("0488ade4", "xprv"),
        ("049d7878", "yprv"),
        ("04b2430c", "zprv"),
        ("0295b005", "Yprv"),
        ("02aa7a99", "Zprv"),
        ("019d9cfe", "Ltpv"),
        ("01b26792", "Mtpv"),
        ("04358394", "tprv"),
        ("044a4e28", "uprv"),
        ("045f18bc", "vprv"),
        ("024285b5", "Uprv"),
        ("02575048", "Vprv"),
        ("0436ef7d", "ttpv"),
    ]
}

# Leading byte of a WIF private key: bitcoin mainnet, every testnet, litecoin mainnet.
WIF_VERSIONS = (0x80, 0xEF, 0xB0)

_EXTENDED_KEY_LEN = 78  # as in chains/bitcoin/address.py, which config must not import


def private_key_kind(text: str) -> str | None:
    """What kind of private key `text` is ("an extended PRIVATE key (xprv)", "a WIF private key"), or None.

    Decodes rather than pattern-matches, so a random token that happens to start with "xprv" is not refused,
    and a private key under any version is (its key data starts with 0x00, BIP32's private marker).
    """
    try:
        raw = Base58Decoder.CheckDecode(text)
    except (ValueError, Base58ChecksumError):
        return None
    if len(raw) == _EXTENDED_KEY_LEN:
        prefix = PRIVATE_EXTENDED_KEY_VERSIONS.get(raw[:4])
        if prefix is not None or raw[45] == 0:
            return f"an extended PRIVATE key ({prefix or text[:4] + ' prefix, private key data'})"
    if raw and raw[0] in WIF_VERSIONS and (len(raw) == 33 or (len(raw) == 34 and raw[33] == 1)):
        return "a WIF private key"
    return None


def refuse_private_material(ctx: Context, table: dict[str, object], prefix: str) -> None:
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        # Chain names are the operator's labels, not settings.
        if prefix != "chains" and _PRIVATE_KEY_NAME.search(name):
            ctx.refuse(
                key,
                "refused: the key name suggests private key material (seed, mnemonic, private key); "
                "watcherd is watch-only and never needs it",
            )
            continue
        _refuse_in_value(ctx, key, value)


def _refuse_in_value(ctx: Context, key: str, value: object) -> None:
    if isinstance(value, dict):
        refuse_private_material(ctx, value, key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_in_value(ctx, f"{key}[{i}]", item)
    elif isinstance(value, str):
        why = private_material(value)
        if why is not None:
            ctx.refuse(key, f"refused: {why}; {WATCH_ONLY}")


def private_material(value: str) -> str | None:
    """Why `value` looks like private key material ("this is a WIF private key"), or None."""
    for run in _BASE58_RUN.findall(value):
        kind = private_key_kind(run)
        if kind is not None:
            return f"this is {kind}"
    match = _PRIVATE_PREFIX.search(value)
    if match is not None:
        return f"this is an extended PRIVATE key ({match[0][:4]})"
    words = [unicodedata.normalize("NFKD", w).lower() for w in re.split(r"[\s,;]+", value) if w]
    # 12 is the shortest BIP39 mnemonic; more words (a typo'd or padded seed) are refused all the same.
    if len(words) >= 12 and all(w in _bip39_words() for w in words):
        return f"this is a BIP39 mnemonic ({len(words)} words)"
    # Monero seeds: 25 words (24 + checksum word), 13 for MyMonero; legacy Electrum-style lists alike.
    if len(words) >= 12 and all(w in _monero_words() for w in words):
        return f"this is a Monero mnemonic seed ({len(words)} words)"
    return None


@cache
def _monero_words() -> frozenset[str]:
    """Every word of every Monero seed wordlist the `monero` package ships, NFKD-normalised."""
    from monero.wordlists import get_wordlist, list_wordlists

    return frozenset(
        unicodedata.normalize("NFKD", w).lower() for name in list_wordlists() for w in get_wordlist(name).word_list
    )


@cache
def _bip39_words() -> frozenset[str]:
    """Every word of every BIP39 wordlist bip_utils ships, NFKD-normalised (some have accents)."""
    from bip_utils import Bip39Languages
    from bip_utils.bip.bip39.bip39_mnemonic_utils import Bip39WordsListGetter

    words: set[str] = set()
    for language in Bip39Languages:
        wordlist = Bip39WordsListGetter().GetByLanguage(language)
        for i in range(wordlist.Length()):
            words.add(unicodedata.normalize("NFKD", wordlist.GetWordAtIdx(i)))
    return frozenset(words)
