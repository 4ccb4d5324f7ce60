"""JSONL event log: torn-line repair after kill -9, rotation by size, a lock against a second writer, disk errors."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emovoice_daemon.outputs import metrics
from emovoice_daemon.outputs.eventlog import EventLog, EventLogError

WRITER = """
import sys
from emovoice_daemon.outputs.eventlog import EventLog
log = EventLog(sys.argv[1], rotate_bytes=10**12, fsync_interval_s=1000)
i = 0
print("go", flush=True)
while True:
    log.write({"seq": i, "pad": "x" * (i % 500)})
    i += 1
"""


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_torn_last_line_is_cut_on_open(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq":1}\n{"seq":2}\n{"seq":3,"ty')
    log = EventLog(path)
    log.write({"seq": 4})
    log.close()
    assert [e["seq"] for e in lines(path)] == [1, 2, 4]


def test_file_that_is_only_a_torn_line_becomes_empty(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\0" * 70000)  # e.g. unwritten blocks after a power loss
    EventLog(path).close()
    assert path.read_bytes() == b""


def test_kill_9_mid_write_leaves_only_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline() == b"go\n"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        EventLog(path).close()  # what a restarted daemon does first
        events = lines(path)  # raises on a torn or merged line
        assert events and path.read_bytes().endswith(b"\n")
    seqs = [e["seq"] for e in events]
    assert seqs.count(0) == 3  # three runs, each 0, 1, 2, ... with nothing lost in between
    assert all(b == a + 1 for a, b in zip(seqs, seqs[1:]) if b != 0)


def test_rotates_by_size_and_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, rotate_bytes=200, keep=2)
    for i in range(40):
        log.write({"seq": i, "pad": "y" * 20})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 200
    newest = [e["seq"] for name in ("events.jsonl.2", "events.jsonl.1", "events.jsonl") for e in lines(tmp_path / name)]
    assert newest == list(range(newest[0], 40))  # the kept files hold the newest events, in order


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    first = EventLog(path)
    with pytest.raises(EventLogError, match="in use by another process"):
        EventLog(path)
    first.close()
    EventLog(path).close()  # free again once the first one closed


def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(EventLogError, match="cannot open"):
        EventLog(tmp_path / "file" / "events.jsonl")


def test_failed_write_is_counted_waits_and_leaves_no_partial_line(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write({"seq": 1})
    real_write = os.write

    def disk_full_after_5_bytes(fd: int, data: bytes) -> int:
        if len(data) > 5:
            return real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    before = metrics.EVENTLOG_ERRORS._value.get()
    monkeypatch.setattr(os, "write", disk_full_after_5_bytes)
    log.write({"seq": 2})
    assert log.pending == 1 and log.error == "No space left on device" and not log.flush()
    assert path.read_bytes().endswith(b"\n")  # the partial line was undone
    monkeypatch.setattr(os, "write", real_write)
    log.write({"seq": 3})
    log.close()
    assert metrics.EVENTLOG_ERRORS._value.get() == before + 2
    assert [e["seq"] for e in lines(path)] == [1, 2, 3] and log.pending == 0 and log.lost == 0


def test_a_full_backlog_loses_new_events_and_counts_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = EventLog(tmp_path / "events.jsonl", backlog_bytes=100)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    for i in range(10):
        log.write({"seq": i, "pad": "x" * 20})
    monkeypatch.setattr(os, "write", real_write)
    assert log.flush() and log.lost == 10 - log_lines_kept(tmp_path / "events.jsonl")
    log.close()


def log_lines_kept(path: Path) -> int:
    return len(lines(path))


def test_the_running_marker_tells_a_killed_daemon_from_a_clean_stop(tmp_path: Path) -> None:
    first = EventLog(tmp_path / "events.jsonl")
    assert not first.crashed
    first.close()
    second = EventLog(tmp_path / "events.jsonl")
    assert not second.crashed
    second.close(clean=False)  # as a kill leaves it
    third = EventLog(tmp_path / "events.jsonl")
    assert third.crashed
    third.close()
