"""The Whisper-encoder protocol end to end on a tiny random encoder: feature cache, folds, tables, export."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file
from synthetic_audio import CLASS_SIGNAL, make_cremad, synth, write
from transformers import WhisperConfig, WhisperModel

from emovoice_daemon.config import ModelConfig
from emovoice_daemon.scoring.models.loader import load_classifier
from training.cli import main as cli_main
from training.config import load_config
from training.corpora import load_corpus
from training.run import run

TINY = dict(d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=64, pad_token_id=None, bos_token_id=None, eos_token_id=None)


def make_labelled(root: Path) -> Path:
    """URDU/EMOVO layout: audio/<id>.flac and labels.csv (path,speaker,emotion,label3)."""
    rows = ["path,speaker,emotion,label3"]
    for i, (emotion, label) in enumerate([("angry", "NEGATIVE"), ("neutral", "NEUTRAL"), ("happy", "POSITIVE"),
                                          ("surprise", "AMBIGUOUS")] * 3):
        write(root / "audio" / f"c{i}.flac", synth(CLASS_SIGNAL.get(label, "tone"), 1.0, 8000, seed=500 + i), 8000)
        rows.append(f"audio/c{i}.flac,S{i % 2},{emotion},{label}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_labelled_csv_loader_excludes_ambiguous(tmp_path: Path) -> None:
    utts = load_corpus("urdu", make_labelled(tmp_path / "urdu"))
    assert len(utts) == 9 and {u.label for u in utts} == {"NEGATIVE", "NEUTRAL", "POSITIVE"}
    assert {u.speaker for u in utts} == {"urdu:S0", "urdu:S1"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**TINY)).save_pretrained(tmp_path / "enc")
    make_cremad(tmp_path / "cremad", actors=8)
    make_labelled(tmp_path / "urdu")
    path = tmp_path / "whisper.yaml"
    path.write_text(f"""
model_kind: whisper
model: {{encoder: {tmp_path / 'enc'}, encoder_layers: 2, layers: [1, 2], train_conditions: [clean, aug1],
         in_corpus_conditions: [clean, telephony], history_s: 6}}
train_corpora: [{{kind: cremad, path: {tmp_path / 'cremad'}}}]
test_corpora: [{{kind: urdu, path: {tmp_path / 'urdu'}}}]
train: {{epochs: 3, batch_size: 16, lr: 0.01}}
evaluation: {{folds: 2, val_fraction: 0.5, conditions: [clean, telephony], negative_recall_target: 0.8}}
ship: fold0
num_threads: 1
cache_dir: {tmp_path / 'cache'}
output_dir: {tmp_path / 'run'}
export_dir: {tmp_path / 'export'}
card: {{title: tiny}}
""")
    return path


def test_protocol_prints_tables_exports_a_loadable_head_and_reuses_its_cache(config: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    run(load_config(config), lines.append)
    text = "\n".join(lines)
    assert sum("encoding" in line for line in lines) == 5  # cremad: telephony, clean, aug1; urdu: clean, telephony
    metrics = (tmp_path / "run" / "metrics.md").read_text()
    for needle in ("cremad held-out actors, mean ± std over 2 folds", "urdu (never trained on), shipped model",
                   "NEUTRAL recall", "NEGATIVE precision", "site statistics + 6 s of leg", "site + 30 s of leg",
                   "training stats (no adaptation)"):
        assert needle in metrics and needle in text, needle
    probs = np.load(tmp_path / "run" / "shipped_probs.npz")
    assert list(probs["names"]) == ["cremad", "urdu"] and probs["urdu/probs"].shape == (9, 3)
    export = tmp_path / "export"
    assert not [k for k in load_file(export / "model.safetensors") if k.startswith("encoder.")]
    clf = load_classifier(ModelConfig(path=str(export), adapt=False))
    assert len(clf.model.encoder.layers) == 2 and clf.sampling_rate == 16000
    p = clf.predict(np.zeros((1, 24000), np.float32) + 0.01)
    assert p.shape == (1, 3) and np.isclose(p.sum(), 1.0, atol=1e-5)
    again: list[str] = []
    run(load_config(config), again.append)
    assert not [line for line in again if "encoding" in line]


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (./dev test installs it)")
def test_head_command_trains_machine_speech_as_neutral_and_exports(config: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "head"
    cli_main(["head", "--config", str(config), "--out", str(out), "--epochs", "2", "--machine-speech", "espeak",
              "--machine-seconds", "6"])
    log = capsys.readouterr().out
    assert "2 machine-speech windows as NEUTRAL" in log and "encoding machine speech espeak" in log
    assert load_classifier(ModelConfig(path=str(out), adapt=False)).predict(np.zeros((1, 24000), np.float32)).shape == (1, 3)


def test_chunked_training_features_are_the_daemons(tmp_path: Path) -> None:
    """The head trains on what the daemon computes: clips encoded in the same chunks, pooled the same way."""
    from emovoice_daemon.scoring.resample import resample
    from training.train_whisper import HeadOptions, cache_key, encode, load_encoder, select

    torch.manual_seed(0)
    WhisperModel(WhisperConfig(**TINY)).save_pretrained(tmp_path / "enc")
    encoder = load_encoder(str(tmp_path / "enc"), 2)
    wave = (0.1 * np.random.default_rng(0).standard_normal(20000)).astype(np.float32)  # 2.5 s at 8 kHz
    feats = select(encode(encoder, [wave], print, "t", chunk_s=1.0), [1, 2])
    from emovoice_daemon.scoring.models.whisper import EmoVoiceWhisperConfig, EmoVoiceWhisperForAudioClassification

    full = WhisperConfig(**TINY).to_dict()
    whisper = {k: full[k] for k in ("d_model", "num_mel_bins", "encoder_attention_heads", "encoder_ffn_dim", "max_source_positions")}
    model = EmoVoiceWhisperForAudioClassification(EmoVoiceWhisperConfig(whisper=whisper, encoder_layers=2, layers=[1, 2],
                                                                        chunk_s=1.0))
    model.load_encoder(tmp_path / "enc")
    with torch.inference_mode():
        daemon = model.pooled_features(torch.from_numpy(resample(wave, 8000, 16000))[None]).numpy()
    np.testing.assert_allclose(feats, daemon, rtol=2e-3, atol=2e-3)  # the cache keeps float16
    assert cache_key(["a"], HeadOptions(chunk_s=1.0), "clean") != cache_key(["a"], HeadOptions(), "clean")


def test_distilled_targets_cover_every_window_with_the_teachers_probabilities() -> None:
    from training.call_head import _targets

    class Fixed:
        def probs(self, feats: np.ndarray) -> np.ndarray:
            return np.tile([0.2, 0.5, 0.3], (len(feats), 1))

    hard, cached = np.array([0, -1, 2]), {"clean": np.zeros((3, 2, 2, 4)), "aug1": np.ones((3, 2, 2, 4))}
    keep, y = _targets(cached, hard, None)
    assert keep.tolist() == [True, False, True] and {c: v.tolist() for c, v in y.items()} == {"clean": [0, 2], "aug1": [0, 2]}
    keep, y = _targets(cached, hard, Fixed())  # distilled: every window, the teacher's answer
    assert keep.all() and y.keys() == cached.keys() and all(np.allclose(v, [[0.2, 0.5, 0.3]] * 3) for v in y.values())


def test_head_command_distils_a_shallower_student_from_a_teacher_head(config: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    cli_main(["head", "--config", str(config), "--out", str(teacher), "--epochs", "2", "--machine-speech"])
    cli_main(["head", "--config", str(config), "--out", str(student), "--epochs", "2", "--machine-speech",
              "--layers", "1", "--teacher", str(teacher)])
    assert f"distilled from {teacher}" in capsys.readouterr().out
    clf = load_classifier(ModelConfig(path=str(student), adapt=False))
    assert list(clf.model.config.layers) == [1] and len(clf.model.encoder.layers) == 1  # the daemon runs one block
    assert clf.predict(np.zeros((1, 24000), np.float32) + 0.01).shape == (1, 3)


def test_student_command_distils_a_compact_model_that_adapts_to_the_line(config: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from training.call_head import ANGER_LABELS, Teacher
    from training.compact_student import student_data
    from training.heldout import cremad_split
    from training.run import load
    from training.train_whisper import FeatureCache, HeadOptions, encode, load_encoder

    teacher, student = tmp_path / "teacher", tmp_path / "student"
    cli_main(["head", "--config", str(config), "--out", str(teacher), "--epochs", "2", "--machine-speech"])
    compact = tmp_path / "compact.yaml"
    compact.write_text("model_kind: compact\ntrain_corpora: []\nmodel: {conv2d_channels: [4, 4], conv1d_channels: [8, 8], hidden_size: 8}\n"
                       "train: {batch_size: 8, lr: 0.01}\n")
    cli_main(["student", "--config", str(config), "--out", str(student), "--teacher", str(teacher), "--epochs", "2",
              "--machine-speech", "--compact-config", str(compact), "--conditions", "telephony", "aug1"])
    assert "student: " in capsys.readouterr().out
    clf = load_classifier(ModelConfig(path=str(student), site_stats_path=""))
    assert clf.model.config.feature_norm and clf.sampling_rate == 8000
    assert clf.adapter is not None and clf.adapter.site.mean.shape == (16,)  # mean and std of 8 channels
    assert clf.predict(np.zeros((1, 24000), np.float32) + 0.01).shape == (1, 3)
    with np.load(student / "replay.npz") as z:  # what a site refit of its last layer replays and guards with
        assert z["hidden"].shape[1] == 8 and z["guard"].any() and not z["guard"].all()
        assert set(np.unique(z["labels"])) <= {0, 1, 2}
    # the student hears exactly the windows the teacher's probabilities were computed from
    cfg = load_config(config)
    opts = HeadOptions.from_dict({**cfg.model, "train_conditions": ["aug1"]})
    cremad = load(cfg.train_corpora, tmp_path / "cache")
    cache = FeatureCache(opts, tmp_path / "cache" / "features", cfg.augment, cfg.seed, lambda _: None)
    data = student_data(cremad, cache, Teacher([teacher]), ["aug1"], ANGER_LABELS, cfg.augment, cfg.seed)
    cached = cache.get(cremad, "aug1")
    first = next(i for i, u in enumerate(cremad.utts) if u.speaker in cremad_split(cremad.utts)["train"])
    again = encode(load_encoder(opts.encoder, opts.encoder_layers), [data.train_waves[0]], lambda _: None, "check")
    np.testing.assert_allclose(again[0].astype(np.float32), cached[first].astype(np.float32), atol=1e-2)
    np.testing.assert_allclose(data.train_labels.sum(1), 1.0, atol=1e-5)
