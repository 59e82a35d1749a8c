"""The ``openvtep`` command line."""

import argparse
import sys


def build_parser():
    parser = argparse.ArgumentParser(
        prog="openvtep",
        description="Open hardware VXLAN tunnel endpoint: rules, reference model, simulation.")
    parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
