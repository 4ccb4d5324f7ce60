"""Fixtures for tests/training."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from synthetic_audio import make_cremad


@pytest.fixture(autouse=True)
def _few_threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def cremad_dir(tmp_path: Path) -> Path:
    return make_cremad(tmp_path / "cremad")
