"""Generate the protobuf/gRPC stubs in ``shoal/pb`` from ``proto/*.proto``, and the
descriptor set the gateway's server reflection serves (``native/src/rpc/reflection.binpb``)
from ``proto/reflection/*.proto`` (``make proto``).

``--check`` regenerates into a temporary folder and fails (exit 1) when any generated file
differs from the committed one, so CI catches a .proto edited without ``make proto``.
Imports between generated modules are rewritten to relative ones so the package is
self-contained.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "shoal" / "pb"
REFLECTION_DIR = PROTO_DIR / "reflection"
DESCRIPTORS = ROOT / "native" / "src" / "rpc" / "reflection.binpb"
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi", "_pb2_grpc.pyi")


def _relative_imports(path: Path, modules: set[str]) -> None:
    text = path.read_text()
    for mod in modules:
        text = re.sub(rf"^import {mod} as ", f"from . import {mod} as ", text, flags=re.M)
        text = re.sub(rf"^import {mod}$", f"from . import {mod}", text, flags=re.M)
    path.write_text(text)


def generate(out: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Run protoc for every .proto in ``proto_dir`` into ``out``; return the generated files."""
    from grpc_tools import protoc  # dev dependency, imported only here

    protos = sorted(proto_dir.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {proto_dir}")
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p) for p in protos],
    ]
    # The mypy-protobuf plugins live beside the interpreter (the venv's bin/), maybe off PATH.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    modules = {p.stem + "_pb2" for p in protos} | {p.stem + "_pb2_grpc" for p in protos}
    files = sorted(f for f in out.iterdir() if f.name.endswith(_GENERATED_SUFFIXES))
    for f in files:
        _relative_imports(f, modules)
    return files


def descriptor_set(out: Path, proto_dir: Path = REFLECTION_DIR) -> Path:
    """Compile ``proto_dir``'s files into one FileDescriptorSet at ``out``."""
    from grpc_tools import protoc

    protos = sorted(p.name for p in proto_dir.glob("*.proto"))
    args = ["protoc", f"-I{proto_dir}", f"--descriptor_set_out={out}", *protos]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (descriptor set)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if shoal/pb is stale")
    parser.add_argument("--proto-dir", type=Path, default=PROTO_DIR)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ns = parser.parse_args(argv)
    out_dir: Path = ns.out_dir
    if not ns.check:
        for f in out_dir.iterdir():
            if f.name.endswith(_GENERATED_SUFFIXES):
                f.unlink()
        files = generate(out_dir, ns.proto_dir)
        descriptor_set(DESCRIPTORS, ns.proto_dir / "reflection")
        print(f"generated {len(files)} files in {out_dir}, and {DESCRIPTORS.name}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh_set = descriptor_set(Path(tmp) / DESCRIPTORS.name, ns.proto_dir / "reflection")
        if not DESCRIPTORS.exists() or not filecmp.cmp(fresh_set, DESCRIPTORS, False):
            print(f"{DESCRIPTORS.name} is stale, run `make proto`")
            return 1
        fresh_set.unlink()
        fresh = generate(Path(tmp), ns.proto_dir)
        names = {f.name for f in fresh}
        committed = {f.name for f in out_dir.iterdir() if f.name.endswith(_GENERATED_SUFFIXES)}
        stale = sorted(names ^ committed)
        stale += sorted(
            n for n in names & committed if not filecmp.cmp(Path(tmp) / n, out_dir / n, False)
        )
        if stale:
            print("generated stubs are stale, run `make proto`: " + ", ".join(stale))
            return 1
    print("generated stubs are up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
