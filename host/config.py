"""Device configuration: the ``[vtep]`` table of a ``vtep.toml`` file.

    [vtep]
    local_ip = "198.18.0.1"
    local_mac = "02:00:00:00:01:01"
    gateway_mac = "02:00:00:00:01:fe"
    udp_port = 4789        # optional, RFC 7348 §5 default
    ttl = 64               # optional
    max_frame = 1518       # optional, bytes without FCS
"""

import dataclasses
import tomllib

from .addr import format_ipv4, format_mac, parse_ipv4, parse_mac
from .errors import ConfigError
from .headers import MAX_FRAME_LIMIT, VXLAN_UDP_PORT

__all__ = ["VtepConfig", "load_config", "parse_config"]

MIN_MAX_FRAME = 64


@dataclasses.dataclass(frozen=True)
class VtepConfig:
    local_ip: int
    local_mac: int
    gateway_mac: int
    udp_port: int = VXLAN_UDP_PORT
    ttl: int = 64
    max_frame: int = 1518

    def __post_init__(self):
        checks = (
            ("local_ip", 0, 2**32 - 1), ("local_mac", 0, 2**48 - 1),
            ("gateway_mac", 0, 2**48 - 1), ("udp_port", 1, 65535), ("ttl", 1, 255),
            ("max_frame", MIN_MAX_FRAME, MAX_FRAME_LIMIT),
        )
        for name, low, high in checks:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in {low}..{high}, got {value!r}")

    def to_toml(self):
        return (f'[vtep]\nlocal_ip = "{format_ipv4(self.local_ip)}"\n'
                f'local_mac = "{format_mac(self.local_mac)}"\n'
                f'gateway_mac = "{format_mac(self.gateway_mac)}"\n'
                f"udp_port = {self.udp_port}\nttl = {self.ttl}\nmax_frame = {self.max_frame}\n")


_PARSERS = {"local_ip": parse_ipv4, "local_mac": parse_mac, "gateway_mac": parse_mac}
_REQUIRED = ("local_ip", "local_mac", "gateway_mac")


def parse_config(text, filename="<config>"):
    """Parse the text of a vtep.toml; raises ConfigError naming the file and key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: not valid TOML: {exc}") from None
    unknown_tables = sorted(set(doc) - {"vtep"})
    if unknown_tables:
        raise ConfigError(f"{filename}: unknown table(s) {', '.join(unknown_tables)}; "
                          "expected only [vtep]")
    table = doc.get("vtep")
    if not isinstance(table, dict):
        raise ConfigError(f"{filename}: missing [vtep] table")
    fields = {f.name for f in dataclasses.fields(VtepConfig)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ConfigError(f"{filename}: [vtep] has unknown key(s) {', '.join(unknown)}; "
                          f"expected {', '.join(f.name for f in dataclasses.fields(VtepConfig))}")
    missing = [key for key in _REQUIRED if key not in table]
    if missing:
        raise ConfigError(f"{filename}: [vtep] is missing {', '.join(missing)}")
    values = {}
    for key, value in table.items():
        try:
            values[key] = _PARSERS[key](value) if key in _PARSERS else value
        except ValueError as exc:
            raise ConfigError(f"{filename}: [vtep] {key}: {exc}") from None
    try:
        return VtepConfig(**values)
    except ValueError as exc:
        raise ConfigError(f"{filename}: [vtep] {exc}") from None


def load_config(path):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config is not UTF-8 text") from None
    return parse_config(text, str(path))
