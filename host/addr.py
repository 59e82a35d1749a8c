"""Parsing and formatting of MAC and IPv4 addresses (as integers)."""

import re

_MAC = re.compile(r"^[0-9a-fA-F]{1,2}(:[0-9a-fA-F]{1,2}){5}$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def parse_mac(text):
    """``"02:00:00:00:00:01"`` -> 48-bit integer. Raises ValueError with what was expected."""
    if not isinstance(text, str) or not _MAC.match(text):
        raise ValueError(f"expected a MAC address like 02:00:00:00:00:01, got {text!r}")
    value = 0
    for part in text.split(":"):
        value = value << 8 | int(part, 16)
    return value


def format_mac(value):
    return ":".join(f"{(value >> (40 - 8 * i)) & 0xFF:02x}" for i in range(6))


def parse_ipv4(text):
    """``"198.18.0.1"`` -> 32-bit integer. Raises ValueError with what was expected."""
    if not isinstance(text, str) or not _IPV4.match(text):
        raise ValueError(f"expected an IPv4 address like 198.18.0.1, got {text!r}")
    parts = [int(p) for p in text.split(".")]
    if any(p > 255 for p in parts):
        raise ValueError(f"expected an IPv4 address (each part 0..255), got {text!r}")
    return parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | parts[3]


def format_ipv4(value):
    return ".".join(str((value >> (24 - 8 * i)) & 0xFF) for i in range(4))
