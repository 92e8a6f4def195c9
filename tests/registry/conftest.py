"""Fixtures of the registration tests: a real ``shoal placement`` process on the session etcd
with its artifacts in the SeaweedFS S3 fixture (a fresh bucket prefix per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.devservers import LocalSeaweedS3
from shoal.objstore import ObjectStore
from shoal.settings import CommonSettings
from tests.placement.procs import Procs, wait_banner


@pytest.fixture
def s3_store_url(s3_server: LocalSeaweedS3) -> str:
    """An empty prefix of the test bucket, private to this test."""
    return f"s3://shoal-test/reg-{uuid.uuid4().hex[:12]}"


@dataclass
class Control:
    address: str
    etcd_url: str
    store_url: str
    settings: CommonSettings
    procs: Procs

    def objects(self) -> ObjectStore:
        return ObjectStore(self.store_url, self.settings)

    def env(self) -> dict[str, str]:
        """What a CLI process needs to reach this control plane."""
        from tests.registry.helpers import cli_env

        return cli_env(SHOAL_CONTROL=self.address)


def start_control(
    tmp: Path, etcd_url: str, store_url: str, s3: CommonSettings, **settings: str
) -> Control:
    tmp.mkdir(parents=True, exist_ok=True)
    procs = Procs(tmp, etcd_url, store_url)
    try:
        proc = procs.placement("p1", s3_endpoint=s3.s3_endpoint, **settings)
        address = wait_banner(proc, "control: ")
    except BaseException:
        procs.stop_all()
        raise
    return Control(address, etcd_url, store_url, s3, procs)


@pytest.fixture
def control(
    tmp_path: Path, etcd_url: str, s3_store_url: str, s3_settings: CommonSettings
) -> Iterator[Control]:
    """``shoal placement`` with an s3:// store (the S3 fixture) and the session etcd."""
    c = start_control(tmp_path / "procs", etcd_url, s3_store_url, s3_settings)
    try:
        yield c
    finally:
        c.procs.stop_all()
