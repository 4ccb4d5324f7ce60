"""Emotion models the daemon can load; importing this registers them with transformers' Auto classes."""
from emovoice_daemon.scoring.models import compact, hubert, whisper  # noqa: F401  (registers emovoice-compact, -hubert, -whisper)
