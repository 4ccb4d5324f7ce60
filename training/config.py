"""YAML run configuration (see ``training/configs/*.yaml``)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from training.augment import TelephonyAugment
from training.loop import TrainSettings


def default_cache_dir() -> Path:
    """The user's own cache (``$XDG_CACHE_HOME``, else ``~/.cache``) ``/emovoice/training``: never shared with other users."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emovoice" / "training"


@dataclass
class CorpusSpec:
    """One corpus: loader name (``cremad``, ``ravdess``, ``tess``, ``lego``, ``folders``, ``csv``), path, label overrides."""

    kind: str
    path: Path
    label_map: dict[str, str | None] | None = None
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalSettings:
    """Speaker-independent protocol."""

    folds: int = 5
    max_folds: int | None = None
    val_fraction: float = 0.1
    window_seconds: float = 3.0
    conditions: tuple[str, ...] = ("clean", "telephony")
    negative_recall_target: float | None = None


@dataclass
class RunConfig:
    """Everything one ``emovoice-train run`` needs."""

    name: str
    model_kind: str
    model: dict
    train_corpora: list[CorpusSpec]
    test_corpora: list[CorpusSpec] = field(default_factory=list)
    train: TrainSettings = field(default_factory=TrainSettings)
    augment: TelephonyAugment = field(default_factory=TelephonyAugment)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    ship: str = "final"
    seed: int = 0
    num_threads: int = 2
    cache_dir: Path | None = field(default_factory=default_cache_dir)
    output_dir: Path = Path("runs/default")
    export_dir: Path | None = None
    card: dict = field(default_factory=dict)


def _strict(cls: type, data: dict | None, where: str) -> dict:
    data = dict(data or {})
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    return data


def _corpus(d: dict) -> CorpusSpec:
    d = _strict(CorpusSpec, d, "corpus")
    return CorpusSpec(d["kind"], Path(d["path"]), d.get("label_map"), d.get("options") or {})


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_config(path: Path, overrides: dict | None = None) -> RunConfig:
    """Parse a YAML run config; relative paths stay relative to the working directory (run from the repo root)."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    raw.update(overrides or {})
    raw = _strict(RunConfig, raw, str(path))
    ev = _strict(EvalSettings, raw.get("evaluation"), "evaluation")
    return RunConfig(
        name=raw.get("name", Path(path).stem),
        model_kind=raw["model_kind"],
        model=raw.get("model") or {},
        train_corpora=[_corpus(c) for c in raw["train_corpora"]],
        test_corpora=[_corpus(c) for c in raw.get("test_corpora") or []],
        train=TrainSettings(**_strict(TrainSettings, raw.get("train"), "train")),
        augment=TelephonyAugment(**_tuples(_strict(TelephonyAugment, raw.get("augment"), "augment"))),
        evaluation=EvalSettings(**_tuples(ev)),
        ship=raw.get("ship", "final"),
        seed=int(raw.get("seed", 0)),
        num_threads=int(raw.get("num_threads", 2)),
        cache_dir=(Path(raw["cache_dir"]).expanduser() if raw["cache_dir"] else None) if "cache_dir" in raw
        else default_cache_dir(),
        output_dir=Path(raw.get("output_dir", f"runs/{Path(path).stem}")),
        export_dir=Path(raw["export_dir"]) if raw.get("export_dir") else None,
        card=raw.get("card") or {},
    )
