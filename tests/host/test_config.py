"""Tests of ``openvtep.config``: vtep.toml validation, every error naming the file and key."""


from pathlib import Path

import pytest

from openvtep.config import VtepConfig, load_config, parse_config
from openvtep.errors import ConfigError, UserError

GOOD = {
    "local_ip": '"198.18.0.1"', "local_mac": '"02:00:00:00:01:01"',
    "gateway_mac": '"02:00:00:00:01:fe"', "udp_port": "4789", "ttl": "64", "max_frame": "1518",
}


def toml(**changes):
    """A vtep.toml text: GOOD with ``changes`` (None removes a key)."""
    values = {**GOOD, **changes}
    return "[vtep]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)


def error(text, filename="dev.toml"):
    with pytest.raises(ConfigError) as info:
        parse_config(text, filename)
    assert isinstance(info.value, UserError)
    message = str(info.value)
    assert message.startswith(f"{filename}: "), message
    assert "\n" not in message.strip() or "TOML" in message
    return message


def test_good_config():
    cfg = parse_config(toml(), "dev.toml")
    assert cfg == VtepConfig(0xC6120001, 0x020000000101, 0x0200000001FE, 4789, 64, 1518)


def test_defaults():
    cfg = parse_config(toml(udp_port=None, ttl=None, max_frame=None))
    assert (cfg.udp_port, cfg.ttl, cfg.max_frame) == (4789, 64, 1518)


def test_to_toml_round_trip():
    cfg = VtepConfig(0x0A000001, 0xFEDCBA987654, 0x0123456789AB, 8472, 1, 9216)
    assert parse_config(cfg.to_toml()) == cfg


def test_example_config():
    cfg = load_config(Path(__file__).resolve().parents[2] / "examples" / "vtep.toml")
    assert cfg.local_ip == 0xC6120001


@pytest.mark.parametrize("key, value", [
    ("udp_port", "1"), ("udp_port", "65535"), ("ttl", "1"), ("ttl", "255"),
    ("max_frame", "64"), ("max_frame", "9216"), ("local_mac", '"0:0:0:0:0:0"'),
    ("local_ip", '"255.255.255.255"'), ("gateway_mac", '"FF:FF:FF:FF:FF:FF"'),
])
def test_limits_accepted(key, value):
    parse_config(toml(**{key: value}))


@pytest.mark.parametrize("key, value, fragment", [
    ("local_ip", '"198.18.0.256"', "IPv4"),
    ("local_ip", '"198.18.0"', "IPv4"),
    ("local_ip", '"fe80::1"', "IPv4"),
    ("local_ip", "3323068417", "IPv4"),
    ("local_mac", '"02:00:00:00:01"', "MAC"),
    ("local_mac", '"02-00-00-00-01-01"', "MAC"),
    ("gateway_mac", '"02:00:00:00:01:zz"', "MAC"),
    ("gateway_mac", "2", "MAC"),
    ("udp_port", "0", "1..65535"),
    ("udp_port", "65536", "1..65535"),
    ("udp_port", "-1", "1..65535"),
    ("udp_port", '"4789"', "1..65535"),
    ("udp_port", "4789.0", "1..65535"),
    ("udp_port", "true", "1..65535"),
    ("ttl", "0", "1..255"),
    ("ttl", "256", "1..255"),
    ("ttl", '"64"', "1..255"),
    ("max_frame", "63", "64..9216"),
    ("max_frame", "9217", "64..9216"),
    ("max_frame", "[1518]", "64..9216"),
])
def test_bad_value(key, value, fragment):
    message = error(toml(**{key: value}))
    assert f"[vtep] {key}" in message
    assert fragment in message


@pytest.mark.parametrize("key", ["local_ip", "local_mac", "gateway_mac"])
def test_missing_key(key):
    message = error(toml(**{key: None}))
    assert "missing" in message and key in message


def test_missing_keys_all_named():
    message = error("[vtep]\nttl = 3\n")
    assert all(k in message for k in ("local_ip", "local_mac", "gateway_mac"))


def test_unknown_key():
    message = error(toml() + "udp_prot = 4790\n")
    assert "unknown key" in message and "udp_prot" in message
    assert "udp_port" in message  # says what was expected


@pytest.mark.parametrize("text, names", [
    ('[vxlan]\nx = 1\n', ["vxlan"]),
    ('top = 1\n', ["top"]),
])
def test_unknown_table(text, names):
    message = error(toml() + text if text.startswith("[") else text + toml())
    assert "unknown table" in message
    assert all(n in message for n in names)
    assert "[vtep]" in message


def test_subtable_is_unknown_key():
    message = error(toml() + "[vtep.extra]\nx = 1\n")
    assert "extra" in message


@pytest.mark.parametrize("text", ["", "# nothing\n", "vtep = 1\n", 'vtep = "x"\n'])
def test_missing_vtep_table(text):
    message = error(text)
    assert "[vtep]" in message


@pytest.mark.parametrize("text", [
    "[vtep\nlocal_ip = 1\n", "[vtep]\nlocal_ip = \n", toml() + "ttl = 3\n",
    "not toml at all", '{"vtep": {}}',
])
def test_not_toml(text):
    message = error(text)
    assert "not valid TOML" in message


def test_load_config_names_path(tmp_path):
    path = tmp_path / "vtep.toml"
    path.write_text(toml(ttl="0"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: [vtep] ttl")


def test_load_config_missing(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config: No such file or directory"


def test_load_config_directory(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value).startswith(f"{tmp_path}: cannot read config: ")


def test_load_config_unreadable(tmp_path, monkeypatch):
    # Root reads any file whatever its mode, so the refusal the OS would give is simulated.
    path = tmp_path / "secret.toml"
    path.write_text(toml())
    real_open = open

    def deny(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: cannot read config: Permission denied"


def test_load_config_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(toml().encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: config is not UTF-8 text"


def test_vtepconfig_rejects_bad_values():
    with pytest.raises(ValueError, match="ttl"):
        VtepConfig(1, 2, 3, ttl=0)
    with pytest.raises(ValueError, match="local_ip"):
        VtepConfig(2**32, 2, 3)


def test_load_config_path_through_file(tmp_path):
    path = tmp_path / "vtep.toml"
    path.write_text(toml())
    with pytest.raises(ConfigError) as info:
        load_config(path / "x.toml")
    assert str(info.value) == f"{path / 'x.toml'}: cannot read config: Not a directory"
