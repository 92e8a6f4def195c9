"""The ``shoal`` command: one sub-command per user task, one per process role.

Each sub-command lives beside the code it drives (``worker/cli.py``, ``placement/cli.py``,
...) and exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a
function taking the parsed namespace and returning an exit status. Failures print one line
(``shoal: <reason>``) and exit non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

#: Modules that contribute sub-commands, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "shoal.cli_local",
    "shoal.cli_up",
    "router.cli",
    "worker.cli",
    "placement.cli",
    "capacity.cli",
    "shoal.cli_keys",
    "shoal.cli_tenants",
)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shoal", description="Shoal: a high-density multi-model server."
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    level = logging.WARNING - 10 * ns.verbose
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(ns.func(ns) or 0)
    except CliError as exc:
        print(f"shoal: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Run as ``python -m shoal.cli``: this file is then ``__main__``, a second copy of the
    # module. Sub-commands raise ``shoal.cli.CliError``, so dispatch through that module, or
    # its errors would not be this copy's class and would escape as tracebacks.
    from shoal import cli as _cli

    sys.exit(_cli.main())
