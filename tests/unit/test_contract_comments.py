"""Every service, RPC, message, field, enum and enum value of the contract carries a comment for integrators."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"

# FileDescriptorProto field numbers, for SourceCodeInfo paths
MESSAGE, ENUM, SERVICE = 4, 5, 6
FIELD, NESTED, NESTED_ENUM = 2, 3, 4
ENUM_VALUE, METHOD = 2, 2


def descriptor_set(tmp_path: Path) -> descriptor_pb2.FileDescriptorSet:
    out = tmp_path / "contract.pb"
    include = Path(protoc.__file__).parent / "_proto"
    files = [str(p.relative_to(PROTO)) for p in sorted(PROTO.glob("aitbc/coordinator/v1/*.proto"))]
    code = protoc.main(
        [
            "protoc",
            f"-I{PROTO}",
            f"-I{include}",
            "--include_source_info",
            f"--descriptor_set_out={out}",
            *files,
        ]
    )
    assert code == 0
    return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def undocumented(f: descriptor_pb2.FileDescriptorProto) -> list[str]:
    comments = {
        tuple(loc.path): (loc.leading_comments + loc.trailing_comments).strip()
        for loc in f.source_code_info.location
    }
    missing: list[str] = []

    def need(path: tuple[int, ...], name: str) -> None:
        if not comments.get(path):
            missing.append(f"{f.name}: {name}")

    def enum(path: tuple[int, ...], e: descriptor_pb2.EnumDescriptorProto, prefix: str) -> None:
        need(path, f"enum {prefix}{e.name}")
        for i, value in enumerate(e.value):
            need((*path, ENUM_VALUE, i), f"enum value {prefix}{e.name}.{value.name}")

    def message(path: tuple[int, ...], m: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        if m.options.map_entry:
            return
        need(path, f"message {prefix}{m.name}")
        for i, field in enumerate(m.field):
            need((*path, FIELD, i), f"field {prefix}{m.name}.{field.name}")
        for i, nested in enumerate(m.nested_type):
            message((*path, NESTED, i), nested, f"{prefix}{m.name}.")
        for i, nested in enumerate(m.enum_type):
            enum((*path, NESTED_ENUM, i), nested, f"{prefix}{m.name}.")

    for i, m in enumerate(f.message_type):
        message((MESSAGE, i), m, "")
    for i, e in enumerate(f.enum_type):
        enum((ENUM, i), e, "")
    for i, s in enumerate(f.service):
        need((SERVICE, i), f"service {s.name}")
        for j, rpc in enumerate(s.method):
            need((SERVICE, i, METHOD, j), f"rpc {s.name}.{rpc.name}")
    return missing


def test_every_element_of_the_contract_is_documented(tmp_path: Path) -> None:
    files = [f for f in descriptor_set(tmp_path).file if f.package == "aitbc.coordinator.v1"]
    assert len(files) >= 5
    missing = [item for f in files for item in undocumented(f)]
    assert not missing, "undocumented: " + "; ".join(missing)
