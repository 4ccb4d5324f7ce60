"""Load a Hugging Face audio-classification directory as a 3-class caller-emotion classifier.

Any model ``AutoModelForAudioClassification`` can build (HuBERT, DistilHuBERT, wav2vec2,
the shipped compact CNN) works. Its labels are mapped to NEGATIVE / NEUTRAL / POSITIVE
(built-in names, overridden by ``model.label_map``); the probabilities of the model
labels that map to one class are summed. The directory is validated first, and every
problem is reported as a :class:`ModelError` naming the file and what is wrong.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from emovoice_daemon.config import ModelConfig, escalation_defaults_problem
from emovoice_daemon.scoring.adaptation import LineAdapter
from emovoice_daemon.scoring.models.cascade import CASCADE_TYPE, Cascade, cascade_problem, second_stats_path
from emovoice_daemon.scoring.models.compact import LABELS

log = logging.getLogger(__name__)

COMPACT_DIR = Path(__file__).resolve().parent / "default"  # the compact CNN: any CPU, hundreds of legs per core
ENCODER_DIR = Path(__file__).resolve().parent / "encoder"  # the Whisper-encoder head (needs fetch-encoder)
CASCADE_DIR = Path(__file__).resolve().parent / "student-encoder"  # the student, the encoder where it hears anger
DEFAULT_DIR = ENCODER_DIR  # what the daemon runs when model.path is empty: the best calls (docs/training.md)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
MIN_RATE, MAX_RATE = 8000, 48000
PLACEHOLDER_SEED = 1234

# Common emotion-corpus label names (lower case) and the class each one means for a call centre.
BUILTIN_LABEL_MAP = {
    "negative": "NEGATIVE", "neg": "NEGATIVE", "angry": "NEGATIVE", "anger": "NEGATIVE", "ang": "NEGATIVE",
    "sad": "NEGATIVE", "sadness": "NEGATIVE", "disgust": "NEGATIVE", "dis": "NEGATIVE", "fear": "NEGATIVE",
    "fearful": "NEGATIVE", "fea": "NEGATIVE", "frustrated": "NEGATIVE", "fru": "NEGATIVE",
    "neutral": "NEUTRAL", "neu": "NEUTRAL", "calm": "NEUTRAL",
    "positive": "POSITIVE", "pos": "POSITIVE", "happy": "POSITIVE", "hap": "POSITIVE", "happiness": "POSITIVE",
    "joy": "POSITIVE", "excited": "POSITIVE", "exc": "POSITIVE",
}


class ModelError(Exception):
    """A model directory that cannot be used; the message says which file and why."""


@dataclass
class Classifier:
    """A loaded model: ``predict(float32[B, T] in [-1, 1] at sampling_rate) -> probs[B, 3]``."""

    name: str
    trained: bool
    sampling_rate: int
    model: torch.nn.Module
    class_of_label: np.ndarray  # model output index -> 0/1/2 (NEGATIVE/NEUTRAL/POSITIVE)
    temperature: float = 1.0
    normalize_input: bool = False
    device: torch.device = torch.device("cpu")
    half: bool = False
    labels: tuple[str, ...] = LABELS
    adapter: LineAdapter | None = None  # models with pooled features: the line's feature statistics
    escalation: dict[str, Any] = field(default_factory=dict)  # the model's own escalation defaults
    model_dir: str = ""

    @property
    def adapters(self) -> list[LineAdapter]:
        """Every line adapter the model keeps (a cascade keeps one per stage)."""
        return [self.adapter] if self.adapter is not None else []

    def predict(self, batch: np.ndarray, legs: Sequence[str] | None = None,
                weights: Sequence[float] | None = None) -> np.ndarray:
        """Class probabilities for a batch of equal-length waveforms (of ``legs``, when the model adapts; each
        window teaching the line statistics with its weight, 1 without ``weights``)."""
        return self.predict_with_features(batch, legs, weights)[0]

    def predict_with_features(self, batch: np.ndarray, legs: Sequence[str] | None = None,
                              weights: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probs[B, 3], features float32[B, F] | None)``: the features are the unnormalised pooled head input of
        models that standardise one (:func:`has_features`; what a site's verdicts are learnt from), else None."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"predict expects float32[B, T] with T > 0, got shape {x.shape}")
        if self.normalize_input:
            x = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-7)
        if not has_features(self.model):
            with torch.inference_mode(), self.autocast():
                logits = self.model(input_values=self.to_device(x)).logits
            return self.probs_from_logits(logits), None
        with torch.inference_mode(), self.autocast():
            feats = self.model.pooled_features(self.to_device(x)).float().cpu().numpy()
        return self.predict_features(feats, legs, weights), feats

    def predict_features(self, feats: np.ndarray, legs: Sequence[str] | None,
                         weights: Sequence[float] | None = None) -> np.ndarray:
        """Class probabilities from a model's pooled features (``pooled_features``) of ``legs``' windows:
        standardised by the line's statistics when the model adapts (and ``legs`` are given), else by the training
        site's."""
        if self.adapter is not None and legs is not None:
            z = self.adapter.normalise(legs, feats, weights)
        else:
            z = ((feats - self.model.feature_mean.cpu().numpy()) / self.model.feature_std.cpu().numpy()).astype(np.float32)
        with torch.inference_mode(), self.autocast():
            return self.probs_from_logits(self.model.classify(self.to_device(z)))

    def to_device(self, x: np.ndarray) -> torch.Tensor:
        """Host array -> tensor on the model's device (through pinned memory on CUDA)."""
        t = torch.from_numpy(np.ascontiguousarray(x))
        if self.device.type == "cuda":
            return t.pin_memory().to(self.device, non_blocking=True)
        return t

    def autocast(self) -> Any:
        """fp16 autocast on CUDA, a no-op context on CPU."""
        return torch.autocast("cuda", dtype=torch.float16, enabled=self.half)

    def probs_from_logits(self, logits: torch.Tensor) -> np.ndarray:
        """softmax(logits / temperature), summed per class, as float32[B, 3]."""
        p = torch.softmax(logits.float() / self.temperature, dim=-1).cpu().numpy()
        out = np.zeros((p.shape[0], len(LABELS)), dtype=np.float32)
        for k in range(len(LABELS)):
            out[:, k] = p[:, self.class_of_label == k].sum(axis=1)
        return out


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ModelError(f"{path}: missing (an audio-classification model directory needs it)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return data


def map_labels(id2label: dict[Any, str], label_map: dict[str, str], where: str) -> np.ndarray:
    """Class index (0/1/2) for each model output, from ``label_map`` then the built-in names."""
    bad_targets = sorted({v for v in label_map.values() if v not in LABELS})
    if bad_targets:
        raise ModelError(f"model.label_map: targets {bad_targets} are not one of {', '.join(LABELS)}")
    try:
        ordered = [id2label[k] for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        raise ModelError(f"{where}: id2label keys must be output indices, got {list(id2label)}") from None
    classes, unmapped = [], []
    for name in ordered:
        target = label_map.get(name) or BUILTIN_LABEL_MAP.get(str(name).lower())
        if target is None:
            unmapped.append(name)
        else:
            classes.append(LABELS.index(target))
    if unmapped:
        raise ModelError(
            f"{where}: cannot map model labels {unmapped} to {'/'.join(LABELS)}; "
            f"add them to model.label_map, e.g. {{{unmapped[0]!r}: NEUTRAL}}"
        )
    if LABELS.index("NEGATIVE") not in classes:
        raise ModelError(f"{where}: no model label maps to NEGATIVE (labels: {ordered})")
    return np.array(classes)


def _check_safetensors(path: Path) -> None:
    """A safetensors file holds all the bytes its header promises (a cut-short copy fails here, not mid-load)."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        need = 8 + size + max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc})") from None
    if path.stat().st_size < need:
        raise ModelError(f"{path}: truncated: {path.stat().st_size} bytes, its header needs {need}; copy it again")


ESCALATION_FILE = "escalation.json"  # a model directory's own escalation defaults (operating point, policy)
PROFILE_PREFIX = "profile 'model': "


def read_escalation(path: Path) -> dict[str, Any]:
    """The model directory's escalation defaults ({} without the file); a bad file is a ModelError."""
    file = path / ESCALATION_FILE
    if not file.exists():
        return {}
    data = _read_json(file)
    problem = escalation_defaults_problem(data)
    if problem:
        raise ModelError(f"{file}: {problem.removeprefix(PROFILE_PREFIX)}")
    return data


def validate_model(cfg: ModelConfig) -> dict[str, Any]:
    """What ``load_classifier`` would reject in the model directory, without loading the weights; returns the
    model's escalation defaults."""
    path = Path(cfg.path).expanduser() if cfg.path else DEFAULT_DIR
    if cfg.path or DEFAULT_DIR.is_dir():
        cascade = _read_cascade(path)
        for stage in cascade[1] if cascade else [path]:
            config, _ = _validate_dir(stage)
            map_labels(config["id2label"], cfg.label_map, str(stage / "config.json"))
        return read_escalation(path)
    return {}


def _read_cascade(path: Path) -> tuple[dict[str, Any], list[Path]] | None:
    """A cascade directory's config.json and its two model directories (None for any other directory); a bad
    cascade is a ModelError."""
    config = _read_json(path / "config.json") if path.is_dir() else {}
    if config.get("model_type") != CASCADE_TYPE:
        return None
    problem = cascade_problem(config)
    if problem:
        raise ModelError(f"{path / 'config.json'}: {problem}")
    stages = [(path / config[key]).resolve() for key in ("first", "second")]
    for stage in stages:
        if stage.is_dir() and _read_json(stage / "config.json").get("model_type") == CASCADE_TYPE:
            raise ModelError(f"{path / 'config.json'}: {stage} is a cascade itself; a stage must be a model")
    return config, stages


def _validate_dir(path: Path) -> tuple[dict[str, Any], int]:
    """Check the directory's files; returns (config.json, sampling_rate)."""
    if not path.is_dir():
        raise ModelError(f"{path}: model directory does not exist")
    config = _read_json(path / "config.json")
    prep = _read_json(path / "preprocessor_config.json")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise ModelError(f"{path}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")
    if (path / "model.safetensors").is_file():
        _check_safetensors(path / "model.safetensors")
    rate = prep.get("sampling_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or not MIN_RATE <= rate <= MAX_RATE:
        raise ModelError(
            f"{path / 'preprocessor_config.json'}: sampling_rate must be an integer {MIN_RATE}-{MAX_RATE} Hz, got {rate!r}"
        )
    if "sampling_rate" in config and config["sampling_rate"] != rate:
        raise ModelError(
            f"{path}: config.json sampling_rate {config['sampling_rate']} differs from "
            f"preprocessor_config.json sampling_rate {rate}"
        )
    if not isinstance(config.get("id2label"), dict) or not config["id2label"]:
        raise ModelError(f"{path / 'config.json'}: no id2label (the model's output labels)")
    if not isinstance(config.get("quantize_int8", False), bool):
        raise ModelError(f"{path / 'config.json'}: quantize_int8 must be true or false, got {config['quantize_int8']!r}")
    temperature = config.get("temperature", 1.0)
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ModelError(f"{path / 'config.json'}: temperature must be a number > 0, got {temperature!r}")
    return config, rate


def _pick_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("model.device: cuda requested but no CUDA device is available")
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    torch.set_num_threads(inference_threads(cfg))
    return torch.device("cpu")


def inference_threads(cfg: ModelConfig) -> int:
    """``model.threads``, or for 0 one thread per 4 usable cores (at least 1): intra-op threads cost this
    small model far more CPU per window (11.3 ms with 2 threads against 4.1 with 1 at batch 32), CPU the
    event loop's ingest needs under load (docs/engine.md)."""
    return cfg.threads or max(1, len(os.sched_getaffinity(0)) // 4)


def quantize_linear(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantisation of the linear layers (CPU only; convolutions stay float). torch 2.13 warns that its
    quantized tensor constructors are deprecated; that is not the daemon's operator's concern, so it is not logged."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def wants_int8(cfg: ModelConfig, config: dict[str, Any]) -> bool:
    """``model.quantize_int8``, or with ``model`` the model directory's own choice (config.json ``quantize_int8``)."""
    return cfg.quantize_int8 if isinstance(cfg.quantize_int8, bool) else config.get("quantize_int8") is True


def _finish(model: torch.nn.Module, cfg: ModelConfig, int8: bool = False, **fields: Any) -> Classifier:
    """Eval mode, device placement and optional int8 quantisation (CPU)."""
    model.eval()
    device = _pick_device(cfg)
    if device.type == "cuda":
        model.to(device)
    elif int8:
        model = quantize_linear(model)
    return Classifier(model=model, device=device, half=device.type == "cuda", **fields)


def load_directory(path: Path, cfg: ModelConfig) -> Classifier | Cascade:
    """Validate and load one HF audio-classification directory, or a cascade of two."""
    cascade = _read_cascade(path)
    if cascade is None:
        return _load_model(path, cfg)
    config, stages = cascade
    if cfg.quantize_int8 == "model" and "quantize_int8" in config:  # the cascade's choice for both of its models
        cfg = dataclasses.replace(cfg, quantize_int8=config["quantize_int8"])
    first = _load_model(stages[0], cfg)
    second = _load_model(stages[1], dataclasses.replace(cfg, site_stats_path=second_stats_path(cfg.site_stats_path)))
    gate, sample = float(config["gate"]), float(config.get("sample", 0.0))
    return Cascade(first, second, gate, sample, name=f"{path.name} ({first.name} -> {second.name} at {gate:g})",
                   model_dir=str(path), escalation=read_escalation(path))


def _load_model(path: Path, cfg: ModelConfig) -> Classifier:
    """Validate and load one HF audio-classification directory."""
    from transformers import AutoModelForAudioClassification
    from transformers.utils import logging as hf_logging

    import emovoice_daemon.scoring.models  # noqa: F401  (registers the project's model types)

    hf_logging.disable_progress_bar()  # no "Loading weights 0%|" bar in the daemon's output

    config, rate = _validate_dir(path)
    classes = map_labels(config["id2label"], cfg.label_map, str(path / "config.json"))
    escalation = read_escalation(path)
    try:
        model = AutoModelForAudioClassification.from_pretrained(str(path))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelError(f"{path}: transformers could not load the model: {exc}") from None
    if model.config.num_labels != len(classes):
        raise ModelError(f"{path}: model has {model.config.num_labels} outputs but id2label lists {len(classes)}")
    prep = _read_json(path / "preprocessor_config.json")
    return _finish(
        model, cfg, wants_int8(cfg, config), name=config.get("_name_or_path") or path.name, trained=True, sampling_rate=rate,
        class_of_label=classes, temperature=float(config.get("temperature", 1.0)),
        normalize_input=bool(prep.get("do_normalize", False)), adapter=_adapter(model, cfg),
        escalation=escalation, model_dir=str(path),
    )


def has_features(model: torch.nn.Module) -> bool:
    """Whether a model standardises pooled features before its head (``pooled_features``, ``feature_mean``/``_std``,
    ``classify``): the Whisper-encoder model and compact models trained with ``feature_norm``."""
    return getattr(model, "feature_mean", None) is not None


def _adapter(model: torch.nn.Module, cfg: ModelConfig) -> LineAdapter | None:
    """Line adaptation for models that standardise pooled features (:func:`has_features`)."""
    if not cfg.adapt or not has_features(model):
        return None
    return LineAdapter(model.feature_mean.numpy(), model.feature_std.numpy(),
                       Path(cfg.site_stats_path).expanduser() if cfg.site_stats_path else None,
                       leg_cap=cfg.adapt_leg_cap, site_variance=cfg.adapt_site_variance)


def placeholder_model() -> torch.nn.Module:
    """A tiny randomly initialised HuBERT (fixed seed): exercises the pipeline, knows no emotion."""
    from transformers import HubertConfig, HubertForSequenceClassification

    config = HubertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, classifier_proj_size=16, num_labels=3,
        id2label=dict(enumerate(LABELS)), label2id={k: i for i, k in enumerate(LABELS)},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PLACEHOLDER_SEED)
        return HubertForSequenceClassification(config)


def load_classifier(cfg: ModelConfig) -> Classifier | Cascade:
    """``cfg.path``, else the shipped default (the compact model, with a warning, when the default cannot
    load, e.g. its Whisper checkpoint was never fetched), else an untrained placeholder (scores mean nothing)."""
    if cfg.path:
        return load_directory(Path(cfg.path).expanduser(), cfg)
    if DEFAULT_DIR.is_dir():
        try:
            return load_directory(DEFAULT_DIR, cfg)
        except ModelError as exc:
            if DEFAULT_DIR == COMPACT_DIR or not COMPACT_DIR.is_dir():
                raise
            log.warning("shipped default unusable (%s); scoring with the compact model %s instead", exc, COMPACT_DIR)
            return load_directory(COMPACT_DIR, cfg)
    log.warning("no model configured and no shipped default: using an UNTRAINED placeholder; scores are not emotion")
    return _finish(
        placeholder_model(), cfg, name="untrained-placeholder", trained=False, sampling_rate=16000,
        class_of_label=np.arange(3),
    )
