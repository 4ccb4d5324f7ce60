"""Learning each site from its verdicts (issue #26): window features in memory, the feature store, the label rule,
versioned learnt models and the refit.

May import: ``scoring``, ``judgement``, ``outputs``, ``config``.
"""
