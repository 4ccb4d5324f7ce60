"""The package tree follows the data path: imports between packages only flow downstream, no cycles."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "emovoice_daemon"
# Highest first: a unit may import only units after it in this list (and itself).
RANK = ["tools", "service", "ingest", "calls", "learning", "judgement", "scoring", "outputs", "config"]


def unit_of(module: str) -> str | None:
    """The layout unit of a dotted ``emovoice_daemon`` module name (None for the package root)."""
    parts = module.split(".")
    if parts[0] != "emovoice_daemon" or len(parts) < 2:
        return None
    return parts[1]


def imports_of(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every ``emovoice_daemon`` import in a file, ``TYPE_CHECKING`` blocks included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}:{node.lineno}: relative import; use emovoice_daemon.<package>")
            names = [node.module] if node.module != "emovoice_daemon" else [f"emovoice_daemon.{a.name}" for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.startswith("emovoice_daemon.")]


def source_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_lives_in_a_ranked_unit() -> None:
    units = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in source_files()}
    assert units <= set(RANK), f"unranked packages/modules: {sorted(units - set(RANK))}"


@pytest.mark.parametrize("path", source_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_downstream(path: Path) -> None:
    own = RANK.index(path.relative_to(PACKAGE).parts[0].removesuffix(".py"))
    upward = [f"{path.name}:{line} imports {m}" for line, m in imports_of(path)
              if (unit := unit_of(m)) in RANK and RANK.index(unit) < own]
    assert not upward, "imports against the data path: " + "; ".join(upward)


def test_each_package_says_what_lives_there_and_what_it_may_import() -> None:
    for unit in RANK:
        init = PACKAGE / unit / "__init__.py"
        if init.exists():
            doc = ast.get_docstring(ast.parse(init.read_text())) or ""
            assert "May import" in doc, f"{init} needs a docstring naming what it may import"


def test_a_violation_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from emovoice_daemon.service.daemon import Daemon\n")
    assert [unit_of(m) for _, m in imports_of(bad)] == ["service"]
