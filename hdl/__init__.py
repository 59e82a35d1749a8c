"""openvtep gateware (Amaranth 0.5)."""
