"""What the repository keeps out: caller audio under data/, process id files; and the own-data guide's clip loop."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout


def test_caller_audio_and_pid_files_are_ignored_and_none_is_committed() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    assert git("check-ignore", "data/my-calls/clips/a.wav", "extract.pid").split() == ["data/my-calls/clips/a.wav", "extract.pid"]
    assert not [f for f in git("ls-files").splitlines() if f.endswith(".pid") or f.startswith("data/")]


def test_own_data_clip_loop_reads_a_csv_with_windows_line_endings(tmp_path: Path) -> None:
    if not shutil.which("sox"):
        pytest.skip("sox is needed (./dev test installs it)")
    guide = (REPO / "docs" / "own-data.md").read_text()
    loop = next(block for block in re.findall(r"```sh\n(.*?)```", guide, re.S) if "segments.csv" in block)
    (tmp_path / "recordings").mkdir()
    sf.write(tmp_path / "recordings" / "call1.wav", np.zeros((8000 * 20, 2), dtype=np.int16), 8000)
    # saved by a spreadsheet: CRLF line ends, no line end after the last row
    (tmp_path / "segments.csv").write_bytes(b"call,channel,start,end,label,speaker\r\n"
                                            b"call1.wav,1,1.0,4.0,angry,c1\r\ncall1.wav,1,5.0,9.0,neutral,c2")
    subprocess.run(["bash", "-c", loop], cwd=tmp_path, check=True, timeout=120)
    rows = (tmp_path / "data" / "my-calls" / "clips.csv").read_bytes().decode().splitlines()
    assert rows == ["path,label,speaker", "clips/c1_call1_1.0.wav,angry,c1", "clips/c2_call1_5.0.wav,neutral,c2"]
    assert sf.info(str(tmp_path / "data" / "my-calls" / "clips" / "c1_call1_1.0.wav")).duration == pytest.approx(3.0)
