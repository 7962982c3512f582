"""The [greenfield] table: a plugin's store id and key, refused clearly when incomplete or unsafe."""

from pathlib import Path

import pytest

from tests.test_config import EXAMPLE, MINIMAL, TOKEN
from watcherd.config import load
from watcherd.exceptions import ConfigError

KEY = "gf-key-0123456789abcdef"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "watcherd.toml"
    path.write_text(text)
    return path


def test_greenfield_table_parsed(tmp_path):
    """Every key is read; the key may come from a file; defaults are USD, MediumSpeed and the compat scope."""
    (tmp_path / "gf-key").write_text(KEY + "\n")
    config = load(write(tmp_path, MINIMAL + '[greenfield]\nstore_id = "shop-1"\nstore_name = "My shop"\n'
                                            'api_key_file = "gf-key"\n'))
    gf = config.greenfield
    assert gf is not None
    assert (gf.store_id, gf.store_name, gf.api_key, gf.default_currency, gf.speed_policy, gf.scope) == (
        "shop-1", "My shop", KEY, "USD", "MediumSpeed", "compat")
    assert KEY not in repr(gf)


def test_without_the_table_no_greenfield(tmp_path):
    assert load(write(tmp_path, MINIMAL)).greenfield is None


def test_example_greenfield_table_loads_when_uncommented(tmp_path):
    """The example's commented [greenfield] table is valid once uncommented (with an inline key)."""
    text = EXAMPLE.read_text()
    start = text.index("# [greenfield]")
    block = text[start:text.index("\n\n", start)]
    table = "\n".join(line[2:] for line in block.splitlines() if line.startswith("# ") and not line.startswith("# #"))
    table = table.replace('api_key_file = "/run/credentials/watcherd.service/greenfield-key"', f'api_key = "{KEY}"')
    config = load(write(tmp_path, MINIMAL + table + "\n"))
    assert config.greenfield is not None and config.greenfield.store_id == "watcherd-shop"
    assert config.greenfield.scope == "compat"
    everything = load(write(tmp_path, MINIMAL + table.replace('scope = "compat"', 'scope = "all"') + "\n"))
    assert everything.greenfield is not None and everything.greenfield.scope == "all"


@pytest.mark.parametrize(("table", "key", "message"), [
    ('store_name = "x"\napi_key = "' + KEY + '"', "store_id", "required"),
    ('store_id = "s"', "api_key", "required"),
    ('store_id = "s"\napi_key = "short"', "api_key", "at least 16"),
    ('store_id = "a b/c"\napi_key = "' + KEY + '"', "store_id", "letters, digits"),
    ('store_id = "s"\napi_key = "' + KEY + '"\ndefault_currency = "XYZ"', "default_currency", "ISO 4217"),
    ('store_id = "s"\napi_key = "' + KEY + '"\nspeed_policy = "Fast"', "speed_policy", "one of"),
    ('store_id = "s"\napi_key = "' + KEY + '"\nstore_url = "x"', "store_url", "unknown"),
    ('store_id = "s"\napi_key = "' + KEY + '"\nscope = "native"', "scope", "one of: compat, all"),
    ('store_id = "s"\napi_key = "' + TOKEN + '"', "api_key", "must differ"),
])
def test_incomplete_or_unsafe_greenfield_refused(tmp_path, table, key, message):
    """Each problem names its key: a half-configured compatible API must not start."""
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, MINIMAL + "[greenfield]\n" + table + "\n"))
    problems = [(k, m) for _, k, m in caught.value.problems]
    assert any(k.endswith(key) and message.lower() in m.lower() for k, m in problems), problems
