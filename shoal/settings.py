"""Settings: one frozen dataclass per process role, filled from ``SHOAL_*`` variables.

Every field carries a one-line doc in its metadata (``doc``) that ``shoal <role> --help``
shows. Nothing is read at import time: a process calls ``from_env`` once at start, and tests
build settings objects directly.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ENV_PREFIX = "SHOAL_"


def doc(text: str, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with a one-line description."""
    if default is dataclasses.MISSING:
        return field(metadata={"doc": text}, **kw)
    return field(default=default, metadata={"doc": text}, **kw)


def parse_bytes(value: str | int, total: int | None = None) -> int:
    """Parse ``"512MiB"``, ``"2G"``, ``"1048576"`` or a fraction of ``total`` (``"0.5"``)."""
    if isinstance(value, int):
        return value
    s = value.strip().lower().replace(" ", "")
    units = {
        "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
        "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
        "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "b": 1,
    }  # fmt: skip
    for suffix, mult in units.items():
        if s.endswith(suffix):
            return int(float(s[: -len(suffix)]) * mult)
    number = float(s)
    if 0 < number <= 1 and "." in s:
        if total is None:
            raise ValueError(f"a fraction ({value}) needs a total to apply to")
        return int(number * total)
    return int(number)


def _convert(raw: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if raw == "" or raw.lower() == "none":
            return None
        return _convert(raw, args[0])
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    if hint is int:
        return int(raw)
    if hint is float:
        return float(raw)
    if hint is Path:
        return Path(raw)
    if origin is tuple:
        return tuple(x.strip() for x in raw.split(",") if x.strip())
    return raw


def _read_setting(var: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{var}={path!r}: cannot read it: {exc}") from None
    return text[:-1] if text.endswith("\n") else text


def from_env(
    cls: type[T],
    env: Mapping[str, str] | None = None,
    prefix: str = ENV_PREFIX,
    **overrides: Any,
) -> T:
    """Build ``cls`` from ``prefix + FIELD_NAME`` variables; ``overrides`` win over the env.

    Overrides whose value is None are ignored, so CLI flags left unset fall through to the
    environment and then to the field default. ``prefix + FIELD_NAME + "_FILE"`` names a file
    holding the value instead (a Kubernetes Secret or ConfigMap mounted as files): its text,
    less one trailing newline. Setting both is an error.
    """
    env = os.environ if env is None else env
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if overrides.get(f.name) is not None:
            kwargs[f.name] = overrides[f.name]
            continue
        var = prefix + f.name.upper()
        raw = env.get(var)
        path = env.get(var + "_FILE")
        if path is not None:
            if raw is not None:
                raise ValueError(f"{var} and {var}_FILE are both set; set one")
            raw = _read_setting(var + "_FILE", path)
        if raw is not None:
            try:
                kwargs[f.name] = _convert(raw, hints[f.name])
            except ValueError as exc:
                raise ValueError(f"{prefix}{f.name.upper()}={raw!r}: {exc}") from exc
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if unknown:
        raise TypeError(f"unknown settings for {cls.__name__}: {sorted(unknown)}")
    return cls(**kwargs)


def describe(cls: type[Any]) -> list[tuple[str, str, Any]]:
    """(env var, doc, default) for each field: used by ``--help`` output and the README."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out.append((ENV_PREFIX + f.name.upper(), f.metadata.get("doc", ""), default))
    return out


@dataclass(frozen=True)
class CommonSettings:
    """Settings every role shares: where state and artifacts live."""

    etcd: str = doc("etcd endpoint(s), comma-separated URLs", "http://127.0.0.1:2379")
    store: str = doc("object store URL: file:///path or s3://bucket/prefix", "")
    data_dir: Path = doc(
        "local data folder (embedded etcd, file store, disk cache)", Path(".shoal")
    )
    etcd_ca: str = doc("PEM CA bundle etcd's certificate chains to (set: TLS to etcd)", "")
    etcd_cert: str = doc("PEM client certificate for etcd (its --client-cert-auth)", "")
    etcd_key: str = doc("PEM private key of etcd_cert", "")
    etcd_username: str = doc("etcd user (etcd auth enabled)", "")
    etcd_password: str = doc("password of etcd_username (use SHOAL_ETCD_PASSWORD_FILE)", "")
    s3_endpoint: str = doc("S3 endpoint URL for s3:// stores (empty: AWS default)", "")
    s3_region: str = doc("S3 region", "us-east-1")
    s3_access_key_id: str = doc("S3 access key id", "")
    s3_secret_access_key: str = doc("S3 secret access key", "")
    s3_allow_http: bool = doc("allow plain-HTTP S3 endpoints (local SeaweedFS/MinIO)", True)
    tls_cert: str = doc("PEM certificate of this process (empty: plaintext listeners)", "")
    tls_key: str = doc("PEM private key of tls_cert", "")
    tls_ca: str = doc("PEM CA bundle that peers' certificates must chain to", "")
    tls_client_auth: bool = doc("listeners require client certificates signed by tls_ca", False)
    auth: bool = doc("require API keys (authorization: Bearer <key>) on public endpoints", False)
    advertise_address: str = doc(
        "host:port other processes reach this one at, e.g. the pod IP (empty: the bound host:port)",
        "",
    )

    def store_url(self) -> str:
        return self.store or (self.data_dir.resolve() / "objects").as_uri()
