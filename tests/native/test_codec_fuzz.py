"""The native decoder on hostile bodies: arbitrary bytes never raise anything but
``CodecError``, and 80 MiB bodies (one huge tensor, noise, 40M empty inputs, 80M dims, 80M
typed values, millions of outputs) are answered in a child process that neither crashes nor
holds much more memory than the body itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal import _native
from shoal.pb import shoal_inference_pb2 as pb
from tests.native.codec_wire import native_outcome, python_outcome

MiB = 1 << 20


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_raise_only_codec_error(raw: bytes) -> None:
    try:
        _native.decode_infer_request(raw, 65536)
    except _native.CodecError as exc:
        assert exc.args[0] == "INVALID_ARGUMENT"


def test_an_80_mib_tensor_decodes_as_python_does() -> None:
    x = np.random.default_rng(7).random((80 * MiB // 4 // 20, 20), dtype=np.float32)
    req = pb.ModelInferRequest(model_name="big/one")
    req.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    raw = req.SerializeToString()
    assert len(raw) > 80 * MiB
    got = native_outcome(raw, 1 << 30)
    assert got == python_outcome(raw, 1 << 30)
    assert got[4][0][3] == x.tobytes()


#: Each case builds an 80 MiB body (or 8 MiB where the answer itself is millions of objects)
#: in the child, decodes it, and reports the outcome and the growth of the peak RSS.
CHILD = textwrap.dedent(
    """
    import json, random, resource, sys
    from shoal import _native
    from tests.native.codec_wire import key, ld, varint, vi

    MiB = 1 << 20
    case = sys.argv[1]
    tensor = ld(5, ld(1, b"x") + ld(2, b"INT64") + vi(3, 1))
    if case == "noise":
        body = random.Random(1).randbytes(80 * MiB)
    elif case == "empty-inputs":
        body = b"\\x2a\\x00" * (40 * MiB)
    elif case == "dims":
        body = ld(5, ld(2, b"FP32") + ld(3, b"\\x01" * (80 * MiB)))
    elif case == "values":
        values = ld(3, b"\\x01" * (80 * MiB))
        body = ld(5, ld(1, b"x") + ld(2, b"INT64") + vi(3, 1) + ld(5, values))
    elif case == "outputs":
        body = tensor.replace(vi(3, 1), vi(3, 0)) + b"\\x32\\x00" * (4 * MiB)
    elif case == "claims":
        body = key(7, 2) + varint(2**31 - 2) + b"\\x00" * (80 * MiB)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        out = ["ok", len(_native.decode_infer_request(body, 65536)[4])]
    except _native.CodecError as exc:
        out = list(exc.args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"outcome": out, "grew": peak - base, "body": len(body)}))
    """
)

EXPECTED = {
    "noise": "malformed ModelInferRequest (83886080 bytes): ",
    "empty-inputs": "input '': unsupported datatype ''",
    "dims": "input '': 83886080 dimensions in shape; at most 64 are supported",
    "values": "input 'x': 83886080 values in contents, but INT64 [1] needs 1",
    "outputs": ["ok", 4194304],
    "claims": "malformed ModelInferRequest (83886086 bytes): field 7 claims 2147483646 bytes",
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_80_mib_bodies_never_crash_nor_balloon(case: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    want = EXPECTED[case]
    if isinstance(want, list):
        assert report["outcome"] == want
    else:
        assert report["outcome"][0] == "INVALID_ARGUMENT"
        assert report["outcome"][1].startswith(want), report["outcome"]
    # The decoder copies the body once (bytes -> Bytes) and otherwise keeps counts, not
    # values: no case may hold more than twice the body besides.
    assert report["grew"] <= 2 * report["body"] + 64 * MiB, report
