"""openvtep board tops and builds for open FPGA boards."""
