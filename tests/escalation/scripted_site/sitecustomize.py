"""Put on PYTHONPATH of a test daemon subprocess: it then scores with the scripted ToneClassifier.

The real CLI and Daemon run unchanged; only the model loader is replaced.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import emovoice_daemon.daemon  # noqa: E402
from scripted import ToneClassifier  # noqa: E402

emovoice_daemon.daemon.load_classifier = lambda cfg: ToneClassifier()
emovoice_daemon.models.loader.load_classifier = lambda cfg: ToneClassifier()
