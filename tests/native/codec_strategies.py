"""hypothesis strategies for ModelInferRequest wire bytes: well-formed requests with tensors
right and wrong (every datatype, raw and typed contents, huge, negative and too many dims,
values out of range, NaN bit patterns, fields in any order, merged contents), extra fields
protobuf accepts or refuses (unknown fields of every wire type, groups nested to upb's limit,
wire-type mismatches, padded tags, non-UTF-8 strings at every string field), and byte-level
damage (cuts, flips, insertions)."""

from __future__ import annotations

import math
import struct

from hypothesis import strategies as st

from shoal.artifacts import DTYPES
from tests.native.codec_wire import key, ld, varint, vi

VALID = list(DTYPES)
#: Mostly datatypes the worker accepts (one in four is not).
DATATYPES = st.sampled_from(VALID * 3 + ["BYTES", "", "fp32", "FP32 ", "NOPE"] * 2)
NAMES = st.one_of(
    st.sampled_from(["x", "input__0", "it's", 'say "hi"', "é", "\x00\n", "a\\b", "\u200b😀"]),
    st.text(max_size=6),
)
HUGE = [2**31, 2**40, 2**61, 2**62, 2**63 - 1]
DIMS = st.one_of(st.integers(0, 4), st.sampled_from([0, 1, -1, -7, -(2**63), *HUGE]))
TYPICAL = st.lists(st.integers(0, 4), max_size=4)
SHAPES = st.one_of(
    TYPICAL,
    TYPICAL,
    TYPICAL,
    st.lists(DIMS, max_size=5),
    st.integers(60, 70).flatmap(lambda n: st.lists(st.integers(0, 2), min_size=n, max_size=n)),
    st.integers(62, 66).map(lambda n: [1] * n),
)

#: V2 datatype -> field number of its typed contents.
FIELD_OF = {"BOOL": 1, "INT8": 2, "INT16": 2, "INT32": 2, "INT64": 3}
FIELD_OF |= {"UINT8": 4, "UINT16": 4, "UINT32": 4, "UINT64": 5, "FP32": 6, "FP64": 7}
EDGES = [127, 128, -128, -129, 255, 256, 32767, 32768, -32768, -32769, 65535, 65536, -1]
NANS32 = [0x7F800001, 0x7FC00000, 0xFF800001, 0x7FBFFFFF, 0x7F800000, 0x80000000]
NANS64 = [0x7FF0000000000001, 0xFFF8000000000000, 0x7FF0000000000000]
U64 = st.integers(0, 2**64 - 1)
VALUES = {
    1: st.one_of(st.sampled_from([0, 1, 2, 2**64 - 1]), U64),
    2: st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from(EDGES), U64),
    3: st.integers(-(2**63), 2**63 - 1),
    4: st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(EDGES), U64),
    5: U64,
    6: st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(NANS32)),
    7: st.one_of(U64, st.sampled_from(NANS64)),
}


def _encode_values(field: int, values: list[int], packed: bool) -> bytes:
    if field == 6:
        items = [struct.pack("<I", v) for v in values]
        wire = 5
    elif field == 7:
        items = [struct.pack("<Q", v & (2**64 - 1)) for v in values]
        wire = 1
    else:
        items = [varint(v) for v in values]
        wire = 0
    if packed:
        return ld(field, b"".join(items))
    return b"".join(key(field, wire) + item for item in items)


@st.composite
def contents_chunks(draw: st.DrawFn, datatype: str, n: int) -> list[bytes]:
    """`n` values for `datatype` (sometimes in another field), as 1-2 `contents` messages,
    each value run packed or one per tag, with stray fields protobuf skips."""
    field = FIELD_OF.get(datatype, 6)
    if draw(st.integers(0, 9)) == 0:
        field = draw(st.integers(1, 7))
    values = draw(st.lists(VALUES[field], min_size=n, max_size=n))
    cut = draw(st.integers(0, n))
    chunks = []
    for part in (values[:cut], values[cut:]):
        body = _encode_values(field, part, draw(st.booleans())) if part else b""
        if draw(st.integers(0, 4)) == 0:
            body += draw(st.sampled_from([ld(8, b"\xff"), vi(9, 3), key(6, 0) + varint(1)]))
        chunks.append(body)
    if not cut and draw(st.booleans()):
        chunks = chunks[1:]
    return chunks


@st.composite
def tensors(draw: st.DrawFn, raw_mode: bool) -> tuple[bytes, bytes | None]:
    """An InferInputTensor field (and its raw contents when `raw_mode`)."""
    name, datatype, shape = draw(NAMES), draw(DATATYPES), draw(SHAPES)
    parts = [ld(1, name.encode()), ld(2, datatype.encode())]
    if shape and draw(st.booleans()):
        parts.append(ld(3, b"".join(varint(d) for d in shape)))
    else:
        parts.extend(vi(3, d) for d in shape)
    itemsize = DTYPES[datatype].itemsize if datatype in DTYPES else 4
    count = math.prod(shape) if all(d >= 0 for d in shape) else 1
    exact = count if count <= 32 else draw(st.integers(0, 3))
    n = draw(st.one_of(st.just(exact), st.just(exact), st.integers(0, 6)))
    raw = None
    if raw_mode:
        size = max(0, n * itemsize + draw(st.sampled_from([0, 0, 0, 1, -1])))
        raw = draw(st.binary(min_size=size, max_size=size))
    else:
        parts.extend(ld(5, c) for c in draw(contents_chunks(datatype, n)))
    parts = draw(st.permutations(parts))
    if draw(st.integers(0, 5)) == 0:
        parts.append(ld(1, draw(NAMES).encode()))  # given twice: the last name counts
    return ld(5, b"".join(parts)), raw


PARAMS = st.sampled_from(
    [vi(1, 1), vi(2, 2**64 - 5), ld(3, b"on"), key(4, 1) + b"\x00" * 8, vi(5, 7), vi(3, 1)]
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A ModelInferRequest: routing strings, 0-3 inputs, their raw contents (sometimes one
    too many or too few), outputs and parameters placed anywhere between them."""
    raw_mode = draw(st.booleans())
    made = [draw(tensors(raw_mode)) for _ in range(draw(st.integers(0, 3)))]
    parts = [t for t, _ in made]
    raws = [r for _, r in made if r is not None]
    if raws and draw(st.integers(0, 7)) == 0:
        raws = raws[1:] if draw(st.booleans()) else [*raws, b"\x00" * 4]
    parts += [ld(7, r) for r in raws]
    others = []
    for field in (1, 2, 3):
        if draw(st.booleans()):
            others.append(ld(field, draw(NAMES).encode()))
    for name in draw(st.lists(NAMES, max_size=2)):
        entry = ld(2, ld(1, b"k") + ld(2, draw(PARAMS))) if draw(st.booleans()) else b""
        others.append(ld(6, ld(1, name.encode()) + entry))
    if draw(st.booleans()):
        others.append(ld(4, ld(1, draw(NAMES).encode()) + ld(2, draw(PARAMS))))
    for part in others:
        parts.insert(draw(st.integers(0, len(parts))), part)
    return b"".join(parts)


def _nested_groups(depth: int, field: int = 15) -> bytes:
    return key(field, 3) * depth + key(field, 4) * depth


#: Fields added to a request: some protobuf skips, some it refuses.
EXTRA_FIELDS = [
    vi(1, 5),  # model_name as a varint: an unknown field
    key(5, 0) + varint(1),  # inputs as a varint
    key(7, 5) + b"\x00" * 4,
    key(2, 1) + b"\x00" * 8,
    key(1, 3) + vi(1, 1) + key(1, 4),  # model_name as a group
    key(20, 3) + key(21, 3) + key(21, 4) + key(20, 4),
    key(20, 3) + key(21, 4),  # a group closed by another number
    key(20, 4),  # a stray end-group tag
    key(20, 3),  # a group never closed
    b"\x00\x01",  # field number 0
    key(20, 6) + b"\x01",
    key(20, 7) + b"\x01",
    key(1, 2, pad=4) + varint(1) + b"m",  # a tag padded to 5 bytes
    key(1, 2, pad=5) + varint(1) + b"m",  # to 6 bytes
    key(3, 2) + varint(1, pad=9) + b"i",  # a length padded to 10 bytes
    key(3, 2) + varint(1, pad=10) + b"i",  # to 11 bytes
    vi(30, 2**64 - 1)[:-1] + b"\x7f",  # a 10-byte varint with bits past the 64th
    key(7, 2) + varint(2**31 - 1),  # a huge claimed length
    key(2**29 - 1, 0) + b"\x01",  # the largest field number
    key(1, 2) + varint(2**31 + 5),
    ld(1, b"\xff\xfe"),
    ld(2, b"\xc3\x28"),
    ld(3, b"\xed\xa0\x80"),  # a UTF-16 surrogate
    ld(5, ld(1, b"\xff")),
    ld(5, ld(2, b"\x80")),
    ld(5, ld(4, ld(1, b"\xff"))),
    ld(5, ld(4, ld(2, ld(3, b"\xff")))),  # string_param: not UTF-8
    ld(5, ld(5, ld(6, b"\x00" * 3))),  # packed floats: not whole
    ld(5, ld(5, ld(7, b"\x00" * 12))),
    ld(5, ld(5, ld(2, b"\x80"))),  # a packed varint cut short
    ld(5, ld(3, b"\x80")),
    ld(6, ld(1, b"\xff")),
    ld(6, ld(2, ld(1, b"\xfe"))),
    ld(4, ld(1, b"\xff") + ld(2, b"")),
    ld(4, ld(2, key(1, 3) + key(1, 4))),
    ld(5, key(1, 4)),  # an end-group tag inside a submessage
    ld(5, ld(5, key(9, 3))),
    ld(5, ld(5, ld(6, b"\x00" * 4) + ld(7, b"\x00" * 8))),
    ld(5, ld(5, ld(1, b"\x80\x80\x01") + key(6, 0) + b"\x01" + key(1, 5) + b"\x00" * 4)),
    ld(5, ld(3, b"\x01" + b"\xff" * 9 + b"\x7f")),
    ld(6, ld(2, ld(2, ld(3, b"\xc0\x80")))),  # an overlong encoding
    ld(4, ld(2, ld(3, b"\xef\xbf\xbe"))),  # U+FFFE: valid UTF-8
    ld(4, vi(1, 1) + key(2, 3) + key(2, 4)),
]
EXTRA = st.one_of(
    st.sampled_from(EXTRA_FIELDS),
    st.integers(95, 102).map(_nested_groups),
    st.integers(95, 100).map(lambda d: ld(5, _nested_groups(d))),
    st.integers(95, 99).map(lambda d: ld(5, ld(5, _nested_groups(d)))),
    st.integers(95, 99).map(lambda d: ld(4, ld(2, _nested_groups(d)))),
    st.binary(max_size=6),
)


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A request with extra fields and byte-level damage."""
    raw = draw(requests())
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["cut", "flip", "insert", "append", "append", "prepend"]))
        i = draw(st.integers(0, len(raw)))
        if op == "cut":
            raw = raw[:i]
        elif op == "flip" and raw:
            i = min(i, len(raw) - 1)
            raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
        elif op == "insert":
            raw = raw[:i] + draw(st.binary(min_size=1, max_size=4)) + raw[i:]
        elif op == "append":
            raw += draw(EXTRA)
        else:
            raw = draw(EXTRA) + raw
    return raw
