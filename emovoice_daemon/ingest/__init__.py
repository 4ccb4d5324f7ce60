"""Ingest: how call audio arrives from Asterisk (AudioSocket, RTP + jitter buffer, ARI, SIP, G.711).

May import: ``calls``, ``judgement``, ``scoring``, ``outputs``, ``config``; never ``service`` or ``tools``.
"""
