"""openvtep simulation harness: cocotb on Icarus Verilog, stream drivers, virtual board."""
