"""The ``shoal`` command: one sub-command per user task, one per process role.

Client commands live in this package, on one control-plane client (``control``):
``register``, ``models``, ``alias``, ``traffic``, ``shadow``, ``placement show`` and
``workers``; ``predict`` talks to the router, ``keys`` and ``tenants`` to etcd, ``inspect``
to nothing, and ``up`` starts a local cluster. Each process role keeps only its "run me"
command beside its code (``router/cli.py``, ``worker/cli.py``, ``placement/cli.py``), as does
capacity planning (``capacity/cli.py``). Every command module exposes ``register(subparsers)``,
which adds its parser and sets ``func`` to a function taking the parsed namespace and
returning an exit status. Failures raise ``CliError`` (``shoal.cli.errors``): one line
(``shoal: <reason>``) and a non-zero exit.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from shoal.cli.errors import CliError

#: Modules that contribute sub-commands, in help order. Named rather than imported: shoal/ is
#: what every role builds on, so it does not import the roles; the parser is built from these.
COMMAND_MODULES: tuple[str, ...] = (
    "shoal.cli.artifact",
    "shoal.cli.up",
    "router.cli",
    "shoal.cli.predict",
    "worker.cli",
    "placement.cli",
    "shoal.cli.cluster",
    "shoal.cli.models",
    "shoal.cli.register",
    "shoal.cli.routing",
    "capacity.cli",
    "shoal.cli.keys",
    "shoal.cli.tenants",
)


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
