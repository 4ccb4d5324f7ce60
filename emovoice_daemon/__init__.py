"""EmoVoice: real-time caller-emotion scoring and escalation for Asterisk call centres."""

__version__ = "0.1.0"
