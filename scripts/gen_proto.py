"""Regenerate the Python code for the contract: `python scripts/gen_proto.py [OUT_DIR]`.

The generated modules live in `clients/python/aitbc/coordinator/v1/`, mirroring the proto package
`aitbc.coordinator.v1`, so the server and the SDK import the same code.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
DEFAULT_OUT = ROOT / "clients" / "python"


def generate(out_dir: Path) -> list[Path]:
    """Run protoc over every contract file into out_dir; returns the generated files."""
    protos = sorted(PROTO_DIR.glob("aitbc/coordinator/v1/*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # well-known types shipped with grpcio-tools
    out_dir.mkdir(parents=True, exist_ok=True)  # (protoc refuses an output directory that does not exist)
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_DIR)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    package_dir = out_dir / "aitbc" / "coordinator" / "v1"
    for init in (package_dir / "__init__.py", package_dir.parent / "__init__.py"):
        if not init.exists():
            init.write_text('"""Generated from proto/aitbc/coordinator/v1: do not edit."""\n')
    return sorted(package_dir.glob("*_pb2*.py*"))


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(target):
        print(path.relative_to(target))
