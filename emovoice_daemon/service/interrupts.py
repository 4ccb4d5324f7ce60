"""Ctrl-C before the event loop runs: remembered, so a library that swallows the KeyboardInterrupt cannot lose it.

``install()`` (first thing in the command line) replaces Python's SIGINT handler with one that notes the
interrupt and then raises KeyboardInterrupt as usual; :func:`~emovoice_daemon.service.lifecycle.stop_on_signals`
treats a noted interrupt as a stop request once the loop takes the signals over.
"""
from __future__ import annotations

import signal
from types import FrameType

_interrupted = False


def _note(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGINT, _note)


def pending() -> bool:
    """True once SIGINT arrived before the event loop handled it."""
    return _interrupted
