"""Regenerate the Python code for the .proto files in this folder.

Usage, from the repository root (with the venv's python, which has grpcio-tools and
mypy-protobuf)::

    python proto/generate.py           # regenerate proto/*_pb2*.py and proto/*_pb2*.pyi
    python proto/generate.py --check   # regenerate into a temp dir; exit 1 listing stale files

For every ``proto/X.proto`` this writes, next to it:

- ``X_pb2.py`` (``--python_out``) and ``X_pb2.pyi`` (``--mypy_out``, mypy-protobuf);
- ``X_pb2_grpc.py`` (``--grpc_python_out``) and ``X_pb2_grpc.pyi`` (``--mypy_grpc_out``).

protoc emits bare absolute imports between the generated modules (``import peering_pb2 as
peering__pb2``), which only work with proto/ itself on ``sys.path``. This script rewrites
every such import of a sibling module into a relative one (``from . import peering_pb2 as
peering__pb2``), in the .py and the .pyi files alike, so that the modules live in the package
``peerkit.proto``. Imports of the well-known types (``google.protobuf``) are left alone.

The output depends only on the .proto files and the versions of grpcio-tools and
mypy-protobuf, so the committed files can be checked for staleness.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent

#: Suffixes of the files this script generates from ``X.proto``.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """The .proto sources, in a stable order."""
    return sorted(proto_dir.glob("*.proto"))


def generated_names(protos: list[Path]) -> list[str]:
    """The file names generated for the given sources."""
    return sorted(p.stem + suffix for p in protos for suffix in GENERATED_SUFFIXES)


def _plugin(name: str) -> str:
    """Locate a protoc plugin: next to the running interpreter first, then on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(
            f"generate.py: cannot find the protoc plugin {name!r} (pip install mypy-protobuf)"
        )
    return found


def _run_protoc(protos: list[Path], proto_dir: Path, out_dir: Path) -> None:
    """Run grpc_tools.protoc in a child process (protoc is not re-entrant in-process)."""
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={proto_dir}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        # protoc sees the sources by their names relative to --proto_path, which keeps every
        # path written into the generated code free of this machine's directories.
        *[p.name for p in protos],
    ]
    result = subprocess.run(args, cwd=proto_dir, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"generate.py: protoc failed with exit code {result.returncode}")


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
#: ``import mod`` or ``import mod as alias`` on a line of its own.
_BARE_IMPORT = re.compile(rf"^([ \t]*)import ({_IDENT})((?: as {_IDENT})?)[ \t]*$", re.M)
#: The start of ``from mod import ...`` for a top-level ``mod``.
_FROM_IMPORT = re.compile(rf"^([ \t]*)from ({_IDENT}) import ", re.M)


def relativize_imports(text: str, siblings: set[str]) -> str:
    """Rewrite bare imports of sibling generated modules into relative imports.

    ``import peering_pb2 as peering__pb2`` becomes ``from . import peering_pb2 as
    peering__pb2``, and ``import peering_pb2`` becomes ``from . import peering_pb2``. Only
    whole-line imports of a module in ``siblings`` are touched, so the result is the same
    however often it is applied.
    """

    def fix(match: re.Match[str]) -> str:
        indent, module, alias = match.group(1), match.group(2), match.group(3) or ""
        if module not in siblings:
            return match.group(0)
        return f"{indent}from . import {module}{alias}"

    text = _BARE_IMPORT.sub(fix, text)

    # mypy-protobuf may also write ``from peering_pb2 import X``.
    def fix_from(match: re.Match[str]) -> str:
        indent, module = match.group(1), match.group(2)
        if module not in siblings:
            return match.group(0)
        return f"{indent}from .{module} import "

    return _FROM_IMPORT.sub(fix_from, text)


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[str]:
    """Generate code for every .proto in ``proto_dir`` into ``out_dir``; return the file names."""
    protos = proto_files(proto_dir)
    if not protos:
        raise SystemExit(f"generate.py: no .proto files in {proto_dir}")
    _run_protoc(protos, proto_dir, out_dir)
    siblings = {p.stem + "_pb2" for p in protos} | {p.stem + "_pb2_grpc" for p in protos}
    names = generated_names(protos)
    for name in names:
        path = out_dir / name
        if not path.exists():
            raise SystemExit(f"generate.py: protoc did not produce {name}")
        text = path.read_text(encoding="utf-8")
        fixed = relativize_imports(text, siblings)
        if fixed != text:
            path.write_text(fixed, encoding="utf-8", newline="\n")
    return names


def stale_files(proto_dir: Path = PROTO_DIR) -> list[str]:
    """Regenerate into a temp dir and list the committed files that differ, are missing, or
    are left over from a .proto that no longer exists."""
    with tempfile.TemporaryDirectory(prefix="peerkit-proto-") as tmp:
        fresh_dir = Path(tmp)
        names = generate(fresh_dir, proto_dir)
        stale = []
        for name in names:
            committed = proto_dir / name
            fresh = (fresh_dir / name).read_bytes()
            if not committed.exists():
                stale.append(f"{name} (missing)")
            elif committed.read_bytes() != fresh:
                stale.append(f"{name} (differs)")
    expected = set(names)
    for suffix in GENERATED_SUFFIXES:
        for path in proto_dir.glob("*" + suffix):
            if path.name not in expected:
                stale.append(f"{path.name} (no .proto source)")
    return sorted(stale)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed generated files are stale",
    )
    args = parser.parse_args(argv)

    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated files in proto/ (run: python proto/generate.py):")
            for line in stale:
                print(f"  {line}")
            return 1
        print("proto/: generated code is up to date")
        return 0

    with tempfile.TemporaryDirectory(prefix="peerkit-proto-") as tmp:
        names = generate(Path(tmp))
        for name in names:
            shutil.copyfile(Path(tmp) / name, PROTO_DIR / name)
    expected = set(names)
    for suffix in GENERATED_SUFFIXES:
        for path in PROTO_DIR.glob("*" + suffix):
            if path.name not in expected:
                os.remove(path)
                print(f"removed {path.name} (no .proto source)")
    print(f"generated {len(names)} files in {PROTO_DIR.name}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
