"""Learnt model versions: ``v0001/``, ``v0002/``, ... in ``learning.models_dir``, and the ``current`` pointer.

``current`` is a symbolic link to the version the daemon runs (replaced atomically); without it the daemon runs
the configured (or shipped) model. ``rollback`` points ``current`` at the version before it, or removes it (back
to the configured model) when it was the first.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

POINTER = "current"
NAME = re.compile(r"v(\d{4,})")


class ModelVersions:
    """The versions directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def versions(self) -> list[str]:
        """Version names, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if NAME.fullmatch(p.name) and p.is_dir()),
                      key=lambda n: int(n[1:]))

    def current(self) -> str | None:
        """The version ``current`` points at, or None (the configured model)."""
        link = self.root / POINTER
        if not link.is_symlink():
            return None
        name = os.readlink(link)
        return name if NAME.fullmatch(name) else None

    def path(self, name: str) -> Path:
        return self.root / name

    def staging(self) -> Path:
        """An empty directory to write the next version into (``add`` renames it)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.root / ".next"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        return tmp

    def add(self, staged: Path) -> str:
        """Make a staged directory the next version; returns its name (``current`` is not changed)."""
        names = self.versions()
        name = f"v{(int(names[-1][1:]) if names else 0) + 1:04d}"
        staged.rename(self.root / name)
        return name

    def set_current(self, name: str | None) -> None:
        """Point ``current`` at ``name`` (None: remove it), atomically."""
        link = self.root / POINTER
        if name is None:
            link.unlink(missing_ok=True)
            return
        if name not in self.versions():
            raise ValueError(f"no model version {name} in {self.root}")
        tmp = self.root / f".{POINTER}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(name)
        os.replace(tmp, link)

    def rollback(self) -> str | None:
        """Point ``current`` at the version before it (None: the configured model); returns it. ValueError when
        ``current`` is not set (nothing to roll back)."""
        now = self.current()
        if now is None:
            raise ValueError(f"no learnt model is current in {self.root}: the configured model runs already")
        older = [n for n in self.versions() if int(n[1:]) < int(now[1:])]
        target = older[-1] if older else None
        self.set_current(target)
        return target
