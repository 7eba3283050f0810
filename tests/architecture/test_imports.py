"""The module boundaries, enforced: what may import what.

- `sidecar` never imports `backend_client` (the server does not depend on its client);
- `backend_client` imports only the contract modules of `sidecar`, and those import only each
  other (pydantic and the standard library otherwise), so a `[backend]` install needs no server;
- no pure policy module imports torch, httpx or FastAPI, directly or through other sidecar modules;
- `import sidecar.app` imports no torch: the port is bound before torch is read from disk.

The rules read the source with `ast` (every import the module executes when it is imported:
imports inside functions run later, and `if TYPE_CHECKING:` ones never); the last two are also
checked for real in a fresh interpreter, where `sys.modules` has the final word.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# What `backend_client` may import from `sidecar`: the contract, and nothing else.
CONTRACT_MODULES = frozenset(
    {"sidecar.schemas", "sidecar.option_rules", "sidecar.error_codes", "sidecar.durations"}
)
POLICY_MODULES = ("sidecar.residency_policy", "sidecar.job_residency", "sidecar.placement_policy")
HEAVY_FOR_POLICIES = ("torch", "httpx", "fastapi")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _executed_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run at import: the module body and its try/if/with blocks, not functions or
    classes' methods, and not `if TYPE_CHECKING:` blocks."""
    for node in body:
        yield node
        if isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _executed_statements(node.body)
            yield from _executed_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _executed_statements(block)
            for handler in node.handlers:
                yield from _executed_statements(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _executed_statements(node.body)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")[: -node.level] if not module.endswith("__init__") else []
    return ".".join([*package, node.module] if node.module else package)


@cache
def imports_at_import_time(module: str, path: Path) -> frozenset[str]:
    """Modules `module` imports when it is imported (`from a.b import c` counts a.b and a.b.c)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _executed_statements(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return frozenset(found)


def transitive_imports(start: str, known: dict[str, Path]) -> dict[str, str]:
    """Every module reached from `start` at import time, with the sidecar module that imports it."""
    reached: dict[str, str] = {}
    todo = [start]
    while todo:
        current = todo.pop()
        for imported in imports_at_import_time(current, known[current]):
            if imported in reached:
                continue
            reached[imported] = current
            if imported in known:
                todo.append(imported)
    return reached


def is_within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_sidecar_never_imports_backend_client() -> None:
    offenders = []
    for module, path in modules_of("sidecar").items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):  # anywhere, lazily or not
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [(module, n) for n in names if is_within(n, "backend_client")]
    assert offenders == []


def test_backend_client_imports_only_the_contract_modules_of_sidecar() -> None:
    offenders = []
    for module, path in modules_of("backend_client").items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and is_within(node.module or "", "sidecar"):
                names = {node.module or ""}
            elif isinstance(node, ast.Import):
                names = {a.name for a in node.names if is_within(a.name, "sidecar")}
            else:
                continue
            offenders += [(module, n) for n in names if n not in CONTRACT_MODULES]
    assert offenders == []


@pytest.mark.parametrize("contract", sorted(CONTRACT_MODULES))
def test_the_contract_modules_import_only_each_other(contract: str) -> None:
    known = modules_of("sidecar")
    if contract not in known:
        pytest.skip(f"{contract} does not exist (yet)")
    sidecar_imports = {
        name
        for name in transitive_imports(contract, known)
        if is_within(name, "sidecar") and name in known
    }
    assert sidecar_imports <= CONTRACT_MODULES


@pytest.mark.parametrize("policy", POLICY_MODULES)
def test_policy_modules_import_no_torch_httpx_or_fastapi(policy: str) -> None:
    known = modules_of("sidecar")
    if policy not in known:
        pytest.skip(f"{policy} does not exist (yet)")
    reached = transitive_imports(policy, known)
    offenders = {
        name: importer
        for name, importer in reached.items()
        if any(is_within(name, heavy) for heavy in HEAVY_FOR_POLICIES)
    }
    assert offenders == {}, f"imported (module: by whom): {offenders}"


def modules_after_import(*modules: str) -> set[str]:
    """`sys.modules` of a fresh interpreter after importing `modules`."""
    code = (
        "import json, sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(json.dumps(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout))


def test_importing_the_app_imports_no_torch() -> None:
    loaded = modules_after_import("sidecar.app", "sidecar.__main__")
    heavy = {m for m in loaded if m.split(".")[0] in ("torch", "FlagEmbedding", "transformers")}
    assert heavy == set()


def test_importing_the_policies_imports_no_torch_httpx_or_fastapi() -> None:
    present = [m for m in POLICY_MODULES if m in modules_of("sidecar")]
    loaded = modules_after_import(*present)
    assert {m for m in loaded if m.split(".")[0] in HEAVY_FOR_POLICIES} == set()


def test_configuring_logging_imports_no_model_library() -> None:
    """`configure_logging` runs before the port is bound: transformers' logging (seconds to
    import) is routed later, in a thread, by the app."""
    code = (
        "import json, sys\n"
        "from sidecar.observability import configure_logging\n"
        "configure_logging('INFO', 'json')\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    loaded = set(json.loads(result.stderr))
    assert {m for m in loaded if m.split(".")[0] in ("transformers", "torch")} == set()
