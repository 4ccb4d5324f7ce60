"""Learning each site: refitting a model on the verdicts of the site's agents and supervisors (issue #26).

May import: ``judgement``, ``scoring``, ``outputs``, ``config``; never ``calls``, ``ingest``, ``service`` or ``tools``.
"""
