"""The placement salt (``/shoal/cluster``) that keeps a tenant id from being aimed at chosen
workers, with real processes: a fresh etcd and the ``shoal placement`` service.

* a fresh cluster gets a random 256-bit salt (64 hex characters);
* it is created once: a second placement service started against the same etcd, and a
  restarted one, keep it;
* two fresh clusters get different salts.
"""

from __future__ import annotations

import re
from pathlib import Path

from shoal.cluster import LocalCluster, etcd_get
from shoal.devservers import LocalEtcd
from shoal.records import CLUSTER, ClusterConfig
from tests.e2e.conftest import FAST


def _cluster_record(url: str) -> bytes:
    raw = etcd_get(url, CLUSTER)
    assert raw is not None, "no /shoal/cluster after the placement service started"
    return raw


def _salt(raw: bytes) -> str:
    salt = ClusterConfig.decode(raw).salt
    assert re.fullmatch(r"[0-9a-f]{64}", salt), salt
    return salt


def _fresh_cluster_salt(d: Path, restart: bool) -> str:
    """Start placement services against a fresh etcd; return the salt they leave in it."""
    etcd = LocalEtcd(d / "etcd").start()
    c = LocalCluster(d, workers=0, env=FAST, etcd_url=etcd.url)
    try:
        assert etcd_get(etcd.url, CLUSTER) is None  # fresh: nothing there before placement
        c.start_placement()
        first = _cluster_record(etcd.url)
        salt = _salt(first)
        if restart:
            c.add_placement()  # a second instance while the first runs (a standby)
            assert _cluster_record(etcd.url) == first
            assert c.placement is not None
            c.placement.proc.stop()
            c.start_placement()  # the first one restarted
            assert _cluster_record(etcd.url) == first
        return salt
    finally:
        c.stop()
        etcd.stop()


def test_a_fresh_cluster_gets_a_random_256_bit_salt_created_once(tmp_path: Path) -> None:
    one = _fresh_cluster_salt(tmp_path / "one", restart=True)
    two = _fresh_cluster_salt(tmp_path / "two", restart=False)
    assert one != two
    assert len(set(one)) > 4 and len(set(two)) > 4  # not a constant pattern
