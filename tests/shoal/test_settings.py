"""Settings from the environment (``shoal.settings.from_env``): plain variables, ``_FILE``
variables (Kubernetes Secrets and ConfigMaps mounted as files), and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from placement.settings import PlacementSettings
from router.settings import RouterSettings
from shoal.settings import from_env
from worker.settings import WorkerSettings


def test_a_file_variable_holds_the_value_without_its_last_newline(tmp_path: Path) -> None:
    secret = tmp_path / "secret-access-key"
    secret.write_text("s3cr3t\n")
    endpoints = tmp_path / "etcd"
    endpoints.write_text("https://etcd-0:2379,https://etcd-1:2379")  # no newline
    env = {
        "SHOAL_S3_SECRET_ACCESS_KEY_FILE": str(secret),
        "SHOAL_ETCD_FILE": str(endpoints),
        "SHOAL_PORT": "8001",
    }
    s = from_env(WorkerSettings, env)
    assert s.s3_secret_access_key == "s3cr3t"
    assert s.etcd == "https://etcd-0:2379,https://etcd-1:2379"
    assert s.port == 8001
    flag = tmp_path / "auth"
    flag.write_text("true\n")  # typed settings are converted as from a variable
    assert from_env(RouterSettings, {"SHOAL_AUTH_FILE": str(flag)}).auth is True


def test_a_value_and_a_file_for_one_setting_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "id"
    f.write_text("a")
    with pytest.raises(ValueError, match="SHOAL_S3_ACCESS_KEY_ID and SHOAL_S3_ACCESS_KEY_ID_FILE"):
        from_env(
            WorkerSettings,
            {"SHOAL_S3_ACCESS_KEY_ID": "b", "SHOAL_S3_ACCESS_KEY_ID_FILE": str(f)},
        )


def test_an_unreadable_file_names_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"SHOAL_ETCD_FILE='.*nope': cannot read it"):
        from_env(PlacementSettings, {"SHOAL_ETCD_FILE": str(missing)})
    bad = tmp_path / "port"
    bad.write_text("eighty\n")
    with pytest.raises(ValueError, match="SHOAL_PORT='eighty'"):
        from_env(WorkerSettings, {"SHOAL_PORT_FILE": str(bad)})


def test_every_role_takes_an_advertised_address() -> None:
    env = {"SHOAL_ADVERTISE_ADDRESS": "10.1.2.3:8001"}
    for cls in (WorkerSettings, RouterSettings, PlacementSettings):
        assert from_env(cls, env).advertise_address == "10.1.2.3:8001"
