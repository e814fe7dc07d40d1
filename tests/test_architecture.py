"""The package's imports point one way, as docs/architecture.md draws them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "keygen"

#: Each module's layer, from the top; a module imports only from its layer or those below.
#: Longest prefix wins.
LAYERS = {
    "keygen.cli": 6,
    "keygen.backup_cli": 6,
    "keygen.keys_cli": 6,
    "keygen.tls": 6,
    "keygen.arguments": 6,
    "keygen.__main__": 6,
    "keygen.chaos": 6,
    "keygen.bench": 6,
    "keygen.cluster": 6,
    "keygen.backup": 6,
    "keygen.live_instances": 6,
    "keygen.monitor": 6,
    "keygen.checkup": 6,
    "keygen.api": 5,
    "keygen.service": 4,
    "keygen.health": 4,
    "keygen.probes": 4,
    "keygen.history": 4,
    "keygen.alerts": 4,
    "keygen.audit": 4,
    "keygen.auth": 4,
    "keygen.auth_scopes": 4,
    "keygen.auth_tokens": 4,
    "keygen.quotas": 4,
    "keygen.allocator": 3,
    "keygen.breaker": 3,
    "keygen.metrics": 3,
    "keygen.dispensers": 2,
    "keygen.ledgers": 1,
    "keygen.config": 0,
    "keygen.constants": 0,
    "keygen.errors": 0,
    "keygen.files": 0,
    "keygen.ranges": 0,
    "keygen.snapshots": 0,
    "keygen.progress": 0,
    "keygen.histogram": 0,
    "keygen.redact": 0,
    "keygen.rates": 0,
    "keygen.requester": 0,
    "keygen": 0,
    # Stand apart: a program that allocates, or checks ranges, needs nothing of the server.
    "keygen.client": 0,
    "keygen.pool": 0,
    "keygen.checker": 0,
}


def layer_of(module: str) -> int:
    best = max(
        (prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")),
        key=len,
    )
    return LAYERS[best]


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found.append((name, path))
    return found


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return {name for name in names if name == "keygen" or name.startswith("keygen.")}


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    """No module imports from a layer above its own."""
    upward = sorted(name for name in imports_of(path) if layer_of(name) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports {upward}"


def test_the_client_and_the_checker_need_nothing_of_the_server() -> None:
    """keygen.client and keygen.checker import only the base layer."""
    for module in ("keygen.client", "keygen.checker"):
        path = PACKAGE / f"{module.split('.')[1]}.py"
        inner = {name for name in imports_of(path) if layer_of(name) > 0}
        assert not inner, f"{module} imports {sorted(inner)}"


def test_keygen_serve_loads_no_tool_machinery() -> None:
    """Importing the command line loads neither the chaos run nor the cluster topology."""
    probe = (
        "import sys, keygen.cli; "
        "print(' '.join(m for m in sys.modules if m.startswith(('keygen.chaos', "
        "'keygen.cluster', 'uvloop'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = [
        m
        for m in loaded
        if m
        not in {
            # The parser names the fault kinds: the registry is plain data.
            "keygen.chaos",
            "keygen.chaos.cli",
            "keygen.chaos.faults",
            "keygen.cluster",
            "keygen.cluster.cli",
            "keygen.cluster.layout",
            "keygen.cluster.processes",
        }
    ]
    assert not heavy, f"keygen.cli loads {heavy}"
