"""Native version resolution agrees with the Python reference (``shoal.records.resolve``),
driven by a ``random.Random`` whose ``random()`` returns a given u."""

from __future__ import annotations

import random

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.artifacts import Signature
from shoal.records import ModelRecord, ModelVersion, UnknownVersion, resolve

SIG = Signature((), ())


class FixedRandom(random.Random):
    """``random()`` returns ``u``."""

    def __init__(self, u: float) -> None:
        super().__init__(0)
        self.u = u

    def random(self) -> float:
        return self.u


def record(versions: set[int], aliases: dict[str, int], traffic: dict[int, int]) -> ModelRecord:
    vs = {
        v: ModelVersion(v, f"artifacts/{v}", "xgboost", "xgboost-json", "cpu", "0" * 64, 1, SIG)
        for v in versions
    }
    return ModelRecord("acme", "churn", vs, aliases, traffic)


def reference(rec: ModelRecord, requested: str, u: float) -> tuple[str, object]:
    try:
        res = resolve(rec, requested, FixedRandom(u))
    except UnknownVersion as exc:
        return "NotFound", str(exc)
    except ValueError as exc:
        return "ValueError", str(exc)
    return "ok", (res.version.version, res.via)


def native(rec: ModelRecord, requested: str, u: float) -> tuple[str, object]:
    try:
        got = _native.resolve_version(
            rec.full_name, rec.versions.keys(), rec.aliases, rec.traffic, requested, u
        )
    except LookupError as exc:
        return "NotFound", str(exc)
    except ValueError as exc:
        return "ValueError", str(exc)
    return "ok", got


alias_names = st.one_of(
    st.sampled_from(["stable", "canary", "it's", 'say "hi"', "a\\b", "\x00", "é", "\u200b"]),
    st.text(max_size=6),
)
versions = st.sets(st.integers(0, 30), max_size=8)
requests = st.one_of(
    alias_names,
    st.from_regex("\\s*[0-9\u0660-\u0669\u00b2\u2460]{1,6}\\s*", fullmatch=True),
    st.sampled_from(["", " ", "\t\n", "\x1c", "\u3000", "007", "99999999999999999999999"]),
    st.text(max_size=8),
)
draws = st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([0.0, 0.5, 1 - 2**-53]))


@settings(max_examples=300)
@given(
    versions,
    st.dictionaries(alias_names, st.integers(0, 35), max_size=4),
    st.dictionaries(st.integers(0, 35), st.integers(0, 100), max_size=5),
    requests,
    draws,
)
@example({1, 2}, {}, {1: 0, 2: 0}, "", 0.5)  # all-zero weights: random.choices' ValueError
@example({1, 2}, {"stable": 1}, {1: 1, 2: 1}, "", 0.5)  # an exact cumulative edge
def test_agrees_with_reference(
    vs: set[int], aliases: dict[str, int], traffic: dict[int, int], requested: str, u: float
) -> None:
    rec = record(vs, aliases, traffic)
    assert native(rec, requested, u) == reference(rec, requested, u)


def test_every_code_point_strips_reads_and_reprs_as_python() -> None:
    """Each character alone (whitespace? digit? decimal? alias repr?) and, as alias names,
    all characters in runs of 256 (repr of everything printable or escaped)."""
    rec = record({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, {}, {})
    chars = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for c in chars:
        # Cheap pre-check in Python; the reference only where the class is not plain.
        expected = (
            ("ok", (9, "latest"))
            if c.isspace()
            else reference(rec, c, 0.5)
            if c.isdigit()
            else ("NotFound", f"model acme/churn has no alias {c!r}")
        )
        assert native(rec, c, 0.5) == expected, hex(ord(c))
    for i in range(0, len(chars), 256):
        name = "x" + "".join(chars[i : i + 256])
        assert native(rec, name, 0.5) == reference(rec, name, 0.5), hex(ord(chars[i]))
