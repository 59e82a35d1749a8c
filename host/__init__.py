"""openvtep: an open hardware VXLAN tunnel endpoint and flow-offload pipeline."""

__version__ = "0.1.0"
