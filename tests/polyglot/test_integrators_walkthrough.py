"""The README's Integrators section, its stub generation as an integrator runs it: the Python command, Go's buf
template and protoc line (where protoc-gen-go and protoc-gen-go-grpc are installed), and the files of the Rust
build.rs compiled with protoc as prost-build compiles them. Each runs in a temporary copy of proto/, so nothing
is generated into the working tree.

The Go command used to give only `--go_opt` M options: protoc-gen-go-grpc failed "unable to determine Go
import path", and protoc refused the `gen` output directory, which nothing made. The Node and Rust builds
themselves cannot run here (grpc-tools downloads protoc at install; no crate registry): see the README.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "tools" / "buf" / "node_modules" / ".bin" / "buf"
CONTRACT = sorted(
    p.relative_to(ROOT / "proto").as_posix() for p in (ROOT / "proto").glob("aitbc/coordinator/v1/*.proto")
)
GO_PLUGINS = [shutil.which(p) for p in ("protoc-gen-go", "protoc-gen-go-grpc")]
needs_go_plugins = pytest.mark.skipif(
    None in GO_PLUGINS,
    reason="protoc-gen-go and protoc-gen-go-grpc not on PATH (Debian packages of those names)",
)


def integrators() -> str:
    text = (ROOT / "README.md").read_text()
    return text[text.index("## Integrators") : text.index("\n## Layout")]


def block(language: str, marker: str) -> str:
    """The one fenced block of a language with marker in the Integrators section, dedented (they sit in a list)."""
    found = [b for b in re.findall(rf" *```{language}\n(.*?) *```", integrators(), flags=re.S) if marker in b]
    assert len(found) == 1, f"one {language} block with {marker!r}"
    return textwrap.dedent(found[0])


def inline_command(prefix: str) -> str:
    """The inline `...` command of the section starting with prefix."""
    (command,) = re.findall(rf"`({re.escape(prefix)}[^`]*)`", integrators())
    return command


def workspace(tmp_path: Path) -> Path:
    """A directory holding a copy of the contract, as an integrator's checkout would."""
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    return tmp_path


def run(command: str | list[str], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    shell = isinstance(command, str)
    return subprocess.run(command, cwd=cwd, shell=shell, executable="/bin/bash" if shell else None,
                          capture_output=True, text=True, timeout=300, check=False, **kwargs)  # fmt: skip


def go_files(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*.go"))


EXPECTED_GO = sorted(f"{p[: -len('.proto')]}{suffix}" for p in CONTRACT for suffix in (".pb.go", "_grpc.pb.go")
                     if not (suffix == "_grpc.pb.go" and p.endswith("/job.proto")))  # fmt: skip


def test_python_stub_command_generates_importable_stubs(tmp_path: Path) -> None:
    command = inline_command(".venv/bin/python scripts/gen_proto.py")
    out = tmp_path / "out"
    done = run(command.replace(".venv/bin/python", sys.executable).replace("OUT_DIR", str(out)), ROOT)
    assert done.returncode == 0, done.stderr
    probe = "import aitbc.coordinator.v1.job_service_pb2_grpc as g; print(g.JobServiceStub.__name__)"
    imported = run([sys.executable, "-c", probe], tmp_path, env={"PYTHONPATH": str(out)})
    assert imported.stdout.strip() == "JobServiceStub", imported.stderr


@needs_go_plugins
def test_go_buf_template_generates_every_file(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    (work / "buf.gen.go.yaml").write_text(block("yaml", "protoc-gen-go-grpc"))
    command = inline_command("buf generate --template buf.gen.go.yaml")
    done = run(command.replace("buf ", f"{BUF} ", 1), work)
    assert done.returncode == 0, done.stderr
    assert go_files(work / "gen" / "go") == EXPECTED_GO
    assert (
        "package coordinatorv1\n" in (work / "gen/go/aitbc/coordinator/v1/job_service_grpc.pb.go").read_text()
    )


@needs_go_plugins
def test_go_protoc_command_generates_every_file(tmp_path: Path) -> None:
    work = workspace(tmp_path)
    command = block("sh", "--go-grpc_out").strip()
    if (
        shutil.which("protoc") is None
    ):  # grpcio-tools' protoc, with the well-known types, as the README's Python uses
        command = command.replace(" protoc ", f" {sys.executable} -m grpc_tools.protoc ", 1)
    done = run(command, work)
    assert done.returncode == 0, done.stderr
    assert go_files(work / "gen" / "go") == EXPECTED_GO
    assert "package v1\n" in (work / "gen/go/aitbc/coordinator/v1/job_service_grpc.pb.go").read_text()


def test_rust_build_rs_names_every_service_file_and_they_compile(tmp_path: Path) -> None:
    build_rs = block("rust", "tonic_build::configure()")
    files = re.findall(r'"proto/([^"]+\.proto)"', build_rs)
    # job.proto holds messages only: the service files import it, as prost-build follows imports
    assert sorted(files) == [p for p in CONTRACT if not p.endswith("/job.proto")]
    (include,) = re.findall(r'&\["([^"]+)"\]', build_rs)
    work = workspace(tmp_path)
    out = tmp_path / "descriptors.bin"
    protoc = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{include}",
        f"--descriptor_set_out={out}",
        "--include_imports",
    ]
    done = run([*protoc, *(f"proto/{f}" for f in files)], work)
    assert done.returncode == 0, done.stderr
    from google.protobuf import descriptor_pb2

    names = {f.name for f in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file}
    assert set(CONTRACT) <= names


def test_contract_builds_with_the_pinned_buf() -> None:
    assert "./scripts/buf_check.sh" in integrators()
    done = run([str(BUF), "build", "-o", "-#format=json"], ROOT)
    assert done.returncode == 0, done.stderr
