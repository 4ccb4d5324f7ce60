"""Judgement: what a leg's scores mean: the escalation rule (policy), post-call summary, behavioural cues.

May import: ``scoring``, ``outputs``, ``config``; never ``calls``, ``ingest``, ``service`` or ``tools``.
"""
