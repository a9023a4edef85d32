"""The architecture's import rules, checked on the source: the model and the checker are pure
(standard library only, nothing of the implementation), and the package list in pyproject.toml
installs every folder that is a package."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)
# modules the pure layers must not use even though they are in the standard library
IMPURE = {"socket", "asyncio", "threading", "time", "random", "sqlite3", "subprocess", "os",
          "select", "selectors", "signal", "multiprocessing", "urllib", "http"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(level, module) for every import in a file; level 0 is absolute."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(0, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.level, node.module or ""))
    return out


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", files("model"), ids=lambda p: p.name)
def test_model_is_pure(path: Path) -> None:
    for level, module in imports(path):
        if level == 0:
            top = module.split(".")[0]
            assert top in STDLIB or top == "__future__", f"{path.name} imports {module}"
            assert top not in IMPURE, f"{path.name} imports {module}: the model does no I/O"
        else:
            assert level == 1, f"{path.name} reaches outside the model (level {level})"


@pytest.mark.parametrize("path", files("checker"), ids=lambda p: p.name)
def test_checker_is_generic(path: Path) -> None:
    for level, module in imports(path):
        if level == 0:
            top = module.split(".")[0]
            assert top in STDLIB or top == "__future__", f"{path.name} imports {module}"
        else:
            assert level == 1, f"{path.name} reaches outside the checker"
        assert "model" not in module.split(".") and "impl" not in module.split(".")


@pytest.mark.parametrize("path", files("impl"), ids=lambda p: str(p.relative_to(ROOT)))
def test_impl_does_not_import_the_checker_or_the_cli(path: Path) -> None:
    for _level, module in imports(path):
        parts = module.split(".")
        assert "checker" not in parts and "cli" not in parts, f"{path} imports {module}"


def test_every_package_folder_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapping = config["package-dir"]
    for name, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            package = ".".join([name, *rel.parts]) if rel.parts else name
            assert package in listed, f"{package} ({init.parent}) is missing from pyproject"


@pytest.mark.parametrize("path", files("conformance"), ids=lambda p: p.name)
def test_conformance_uses_only_the_model_and_the_implementation(path: Path) -> None:
    """The conformance kit may import peerkit.model and peerkit.impl (and itself), never the
    checker or the CLI: it holds an implementation to the model, it does not search the model."""
    # pytest: the plugin and the suite against running servers (plugin.py, target_suite.py)
    allowed_third_party = {"trio", "outcome", "hypothesis", "pytest"}
    for level, module in imports(path):
        parts = module.split(".")
        assert "checker" not in parts and "cli" not in parts, f"{path.name} imports {module}"
        if level == 0:
            top = parts[0]
            if top == "peerkit":
                assert len(parts) > 1 and parts[1] in ("model", "impl", "conformance"), (
                    f"{path.name} imports {module}")
            else:
                assert top in STDLIB or top == "__future__" or top in allowed_third_party, (
                    f"{path.name} imports {module}")
        else:
            assert level == 1, f"{path.name} reaches outside the conformance package"
