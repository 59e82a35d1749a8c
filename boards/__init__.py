"""openvtep board tops and builds for open FPGA boards.

- :mod:`.boards`: the boards (amaranth-boards platforms), their widths, clock targets and
  programmers;
- :mod:`.designs`: which gateware a build holds (the full pipeline once it exists, else the
  largest piece of the datapath that does), chosen in one place;
- :mod:`.top`: ``BoardTop``: PLL clock, the design, and its board I/O;
- :mod:`.pll`: iCE40/ECP5 PLL settings and the ``sync`` clock domain;
- :mod:`.build`: ``openvtep build``: yosys + nextpnr (YoWASP wheels by default), report.json;
- :mod:`.flash`: ``openvtep flash``;
- :mod:`.make_boards`: every board, two at a time, one summary table;
- :mod:`.cli`: ``add_build_parser``/``add_flash_parser`` for the ``openvtep`` command
  (``python -m openvtep.boards build|flash`` runs them on their own).
"""
