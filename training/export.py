"""Export to a Hugging-Face-style model directory the daemon loads with ``AutoModelForAudioClassification``."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path

from transformers import PreTrainedModel, Wav2Vec2FeatureExtractor

from training.corpora import CLASSES


def git_revision() -> str:
    """Current commit of the code, with ``+dirty`` when training files have uncommitted changes."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "emovoice_daemon/scoring/models"], capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "")


def save_model_dir(model: PreTrainedModel, out_dir: Path, temperature: float, do_normalize: bool, card: str,
                   state_dict: dict | None = None) -> None:
    """Write ``config.json`` (labels, temperature), ``preprocessor_config.json``, ``model.safetensors`` (``state_dict``
    when given: e.g. a head without its frozen encoder), ``README.md``."""
    if [model.config.id2label[i] for i in range(model.config.num_labels)] != list(CLASSES):
        raise ValueError(f"model labels must be exactly {CLASSES}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.config.temperature = float(temperature)
    model.save_pretrained(out_dir, state_dict=state_dict)
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=int(model.config.sampling_rate),
        padding_value=0.0,
        do_normalize=do_normalize,
        return_attention_mask=True,
    ).save_pretrained(out_dir)
    (out_dir / "README.md").write_text(card)


def render_card(title: str, sections: dict[str, str], meta: dict) -> str:
    """Model card: a metadata block, then the given sections in order."""
    head = "\n".join(f"- **{k}**: {v}" for k, v in meta.items())
    body = "\n\n".join(f"## {name}\n\n{text.strip()}" for name, text in sections.items())
    return f"# {title}\n\n{head}\n\n{body}\n"


def card_meta(model: PreTrainedModel, temperature: float) -> dict:
    """Date, code revision and basic facts for the card header."""
    n_params = sum(p.numel() for p in model.parameters())
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code revision": git_revision(),
        "model type": model.config.model_type,
        "parameters": f"{n_params:,}",
        "input": f"mono waveform, {model.config.sampling_rate} Hz, float in [-1, 1]",
        "labels": json.dumps(list(CLASSES)),
        "temperature": f"{temperature:.4f} (daemon: softmax(logits / temperature))",
    }
