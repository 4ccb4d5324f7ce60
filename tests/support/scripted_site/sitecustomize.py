"""Put on PYTHONPATH of a test daemon subprocess: it then scores with the scripted ToneClassifier.

The real CLI and Daemon run unchanged; only the model loader is replaced.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripted import ToneClassifier  # noqa: E402

import emovoice_daemon.service.daemon  # noqa: E402

emovoice_daemon.service.daemon.load_classifier = lambda cfg: ToneClassifier()
emovoice_daemon.scoring.models.loader.load_classifier = lambda cfg: ToneClassifier()

# Tones stand in for speech here, and the speech gate (rightly) hears no speech in a tone: scripted daemons run
# without it. tests/scoring/test_speech.py and the real-model daemon tests run the gate.
import emovoice_daemon.scoring.speech  # noqa: E402

emovoice_daemon.scoring.speech.SpeechGate.load = classmethod(lambda cls, path=None: None)
