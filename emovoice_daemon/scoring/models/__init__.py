"""Emotion models the daemon can load; importing this registers them with transformers' Auto classes."""
from emovoice_daemon.scoring.models import compact, hubert  # noqa: F401  (registers emovoice-compact, emovoice-hubert)
