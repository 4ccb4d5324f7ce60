"""Learning each site from its verdicts (issue #26): window features held in memory, the label rule and the feature
store, versioned learnt models, and the refit on the verdicts of the site's agents and supervisors.

May import: ``judgement``, ``scoring``, ``outputs``, ``config``; never ``calls``, ``ingest``, ``service`` or ``tools``.
"""
