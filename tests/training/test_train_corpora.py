from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from synthetic_audio import synth, write

from training.corpora import (
    load_corpus,
    load_cremad,
    load_csv,
    load_folders,
    load_lego,
    load_ravdess,
    load_tess,
)


def test_cremad_labels_speakers_and_sex(cremad_dir: Path) -> None:
    utts = load_cremad(cremad_dir)
    assert len(utts) == 4 * 2 * 6
    assert Counter(u.label for u in utts) == {"NEGATIVE": 32, "NEUTRAL": 8, "POSITIVE": 8}
    by_file = {u.path.name: u for u in utts}
    u = by_file["1002_IEO_SAD_XX.flac"]
    assert (u.label, u.emotion, u.speaker, u.sex, u.corpus) == ("NEGATIVE", "SAD", "cremad:1002", "female", "cremad")
    assert by_file["1001_DFA_HAP_XX.flac"].sex == "male"


def test_cremad_label_map_override_excludes_and_moves(cremad_dir: Path) -> None:
    utts = load_cremad(cremad_dir, {"SAD": "NEUTRAL", "FEA": None})
    assert {u.emotion: u.label for u in utts}["SAD"] == "NEUTRAL"
    assert not any(u.emotion == "FEA" for u in utts)


def test_cremad_rejects_unknown_emotion_and_bad_target(tmp_path: Path) -> None:
    write(tmp_path / "AudioWAV" / "1001_DFA_XXX_XX.wav", synth("tone", 0.2, 8000, 0), 8000)
    with pytest.raises(ValueError, match="not in the label table"):
        load_cremad(tmp_path)
    with pytest.raises(ValueError, match="not one of"):
        load_cremad(tmp_path, {"XXX": "ANGRY"})


def test_ravdess_default_table(tmp_path: Path) -> None:
    for actor in ("01", "02"):
        for emo in ("01", "02", "03", "04", "05", "06", "07", "08"):
            write(tmp_path / f"Actor_{actor}" / f"03-01-{emo}-01-01-01-{actor}.wav", synth("tone", 0.2, 16000, 1), 16000)
    utts = load_ravdess(tmp_path)
    assert len(utts) == 2 * 7  # surprised is excluded by default
    table = {u.emotion: u.label for u in utts}
    assert table == {"neutral": "NEUTRAL", "calm": "NEUTRAL", "happy": "POSITIVE", "sad": "NEGATIVE",
                     "angry": "NEGATIVE", "fearful": "NEGATIVE", "disgust": "NEGATIVE"}
    assert {u.speaker: u.sex for u in utts} == {"ravdess:01": "male", "ravdess:02": "female"}
    assert len(load_ravdess(tmp_path, {"surprised": "POSITIVE"})) == 16


def test_tess_names_and_pleasant_surprise(tmp_path: Path) -> None:
    for spk in ("OAF", "YAF"):
        for emo in ("angry", "disgust", "fear", "happy", "neutral", "ps", "sad"):
            write(tmp_path / f"{spk}_{emo}" / f"{spk}_back_{emo}.wav", synth("tone", 0.2, 24414, 2), 24414)
    write(tmp_path / "YAF_pleasant_surprised" / "YAF_dog_pleasant_surprised.wav", synth("tone", 0.2, 24414, 2), 24414)
    utts = load_tess(tmp_path)
    assert len(utts) == 15
    assert {u.speaker for u in utts} == {"tess:OAF", "tess:YAF"}
    assert {u.label for u in utts if u.emotion == "ps"} == {"POSITIVE"}
    assert Counter(u.label for u in utts)["NEGATIVE"] == 8


def test_lego_interactions_table(tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / "audio" / f"call1_{i}.wav", synth("tone", 0.2, 8000, i), 8000)
    (tmp_path / "interactions.csv").write_text(
        "CallID,ExchangeID,AudioFile,EmotionalState\n"
        "call1,0,audio/call1_0.wav,non-angry\n"
        "call1,1,audio/call1_1.wav,slightly angry\n"
        "call1,2,audio/call1_2.wav,garbage\n"
        "call2,0,,very angry\n"
        "call1,3,audio/call1_3.wav,Very Angry\n"
    )
    utts = load_lego(tmp_path)
    assert [(u.emotion, u.label) for u in utts] == [("non-angry", "NEUTRAL"), ("slightly angry", "NEGATIVE"), ("very angry", "NEGATIVE")]
    assert {u.speaker for u in utts} == {"lego:call1"}


def test_folders_nested_and_flat(tmp_path: Path) -> None:
    write(tmp_path / "site" / "NEGATIVE" / "agentA" / "c1.wav", synth("buzz", 0.2, 8000, 0), 8000)
    write(tmp_path / "site" / "NEUTRAL" / "bob_0001.wav", synth("tone", 0.2, 8000, 0), 8000)
    write(tmp_path / "site" / "happy" / "carol_7.flac", synth("chirp", 0.2, 8000, 0), 8000)
    utts = load_folders(tmp_path / "site", {"happy": "POSITIVE"})
    assert sorted((u.label, u.speaker) for u in utts) == [
        ("NEGATIVE", "site:agentA"), ("NEUTRAL", "site:bob"), ("POSITIVE", "site:carol")]


def test_csv_listing(tmp_path: Path) -> None:
    write(tmp_path / "clips" / "a.wav", synth("buzz", 0.2, 8000, 0), 8000)
    write(tmp_path / "clips" / "b.wav", synth("tone", 0.2, 8000, 0), 8000)
    (tmp_path / "calls.csv").write_text("path,label,speaker\nclips/a.wav,angry,17\nclips/b.wav,NEUTRAL,18\n")
    with pytest.raises(ValueError, match="not in the label table"):
        load_csv(tmp_path / "calls.csv")
    utts = load_corpus("csv", tmp_path / "calls.csv", {"angry": "NEGATIVE"})
    assert [(u.label, u.speaker, u.path.name) for u in utts] == [("NEGATIVE", "calls:17", "a.wav"), ("NEUTRAL", "calls:18", "b.wav")]


def test_load_corpus_rejects_unknown_kind_and_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown corpus kind"):
        load_corpus("iemocap", tmp_path)
    (tmp_path / "AudioWAV").mkdir()
    with pytest.raises(ValueError, match="no labelled audio"):
        load_corpus("cremad", tmp_path)


def test_audio_store_resamples_and_caches(tmp_path: Path) -> None:
    from training.audio import AudioStore

    write(tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav", synth("tone", 0.5, 16000, 0), 16000)
    utts = load_ravdess(tmp_path)
    store = AudioStore.load(utts, tmp_path / "cache")
    assert len(store) == 1 and len(store[0]) == 4000
    assert list((tmp_path / "cache").glob("*.npz"))
    again = AudioStore.load(utts, tmp_path / "cache")
    np.testing.assert_array_equal(again[0], store[0])


def test_two_loads_sharing_a_cache_directory_do_not_clash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two evaluations decode the same corpus at once: both write the cache; neither fails, the cache is whole."""
    import threading

    from training import audio

    write(tmp_path / "Actor_01" / "03-01-01-01-01-01-01.wav", synth("tone", 0.5, 16000, 0), 16000)
    utts = load_ravdess(tmp_path)
    both_written = threading.Barrier(2, timeout=10)
    savez = np.savez

    def savez_then_wait(file, **arrays):  # both loads have written their temporary file before either renames it
        savez(file, **arrays)
        both_written.wait()

    monkeypatch.setattr(audio.np, "savez", savez_then_wait)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            audio.AudioStore.load(utts, tmp_path / "cache")
        except BaseException as exc:  # noqa: BLE001 (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [next((tmp_path / "cache").glob("audio-8k-*.npz")).name]
    assert len(audio.AudioStore.load(utts, tmp_path / "cache")[0]) == 4000
