"""Debug audio recording (``debug.record_audio``): each leg's 8 kHz audio as a WAV file.

Off by default: without it the daemon writes no call audio anywhere. When on, the engine the
call legs use is wrapped so that every pushed chunk is also appended to
``<record_dir>/<call_id>-<role>-<UTC start>.wav`` (mode 0600, 16-bit PCM). A file that cannot
be written is logged and the call is scored anyway.
"""
from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from emovoice_daemon.scoring.engine import ScoringEngine, WindowResult

log = logging.getLogger(__name__)

RATE = 8000


def recording_path(record_dir: Path, leg_id: str) -> Path:
    """A file name safe for any leg id (ARI channel ids are not UUIDs)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", leg_id.replace(":", "-"))
    return record_dir / f"{safe}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.wav"


class RecordingEngine:
    """The engine interface the call legs use (open_leg, push, close_leg), recording as it forwards."""

    def __init__(self, engine: ScoringEngine, record_dir: str | os.PathLike[str]) -> None:
        self.engine = engine
        self.record_dir = Path(record_dir)
        self._files: dict[str, sf.SoundFile] = {}

    def open_leg(self, leg_id: str, on_result: Callable[[WindowResult], None]) -> None:
        self.engine.open_leg(leg_id, on_result)
        path = recording_path(self.record_dir, leg_id)
        try:
            self.record_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            self._files[leg_id] = sf.SoundFile(fd, "w", RATE, 1, "PCM_16", format="WAV", closefd=True)
        except (OSError, sf.SoundFileError) as exc:
            log.error("debug.record_audio: cannot record leg %s to %s: %s", leg_id, path, exc)
            return
        log.warning("debug.record_audio: recording leg %s to %s", leg_id, path)

    def push(self, leg_id: str, pcm: np.ndarray) -> None:
        self.engine.push(leg_id, pcm)
        file = self._files.get(leg_id)
        if file is not None:
            try:
                file.write(pcm)
            except (OSError, sf.SoundFileError) as exc:
                log.error("debug.record_audio: recording of leg %s stopped: %s", leg_id, exc)
                self._close(leg_id)

    async def close_leg(self, leg_id: str) -> None:
        try:
            await self.engine.close_leg(leg_id)
        finally:
            self._close(leg_id)

    def _close(self, leg_id: str) -> None:
        file = self._files.pop(leg_id, None)
        if file is not None:
            try:
                file.close()
            except (OSError, sf.SoundFileError) as exc:
                log.error("debug.record_audio: cannot finish the recording of leg %s: %s", leg_id, exc)
