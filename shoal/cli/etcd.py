"""etcd access for the operator commands that talk to it directly (``shoal keys``,
``shoal tenants``): ``--etcd``, else ``$SHOAL_ETCD``, else the local default."""

from __future__ import annotations

import argparse
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shoal.cli.errors import CliError
from shoal.etcd import EtcdStore
from shoal.settings import CommonSettings, from_env
from shoal.state import StateError, StateStore

T = TypeVar("T")

DEFAULT_ETCD = "http://127.0.0.1:2379"


def etcd_url(ns: argparse.Namespace) -> str:
    return str(ns.etcd or os.environ.get("SHOAL_ETCD", DEFAULT_ETCD))


async def with_store(ns: argparse.Namespace, fn: Callable[[StateStore], Awaitable[T]]) -> T:
    """``await fn(store)`` on a connection to etcd; etcd failures become one ``CliError``."""
    try:
        settings = from_env(CommonSettings, etcd=etcd_url(ns))  # SHOAL_ETCD_* access too
        async with EtcdStore.of(settings) as store:
            return await fn(store)
    except (StateError, ValueError) as exc:
        raise CliError(str(exc)) from None
