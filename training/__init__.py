"""EmoVoice training: corpora, telephony augmentation, speaker-independent evaluation, export."""
