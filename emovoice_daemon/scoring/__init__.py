"""Scoring: the engine that batches rolling windows of every leg through the model (VAD, resampling, models).

May import: ``outputs`` (metrics) and ``config`` only.
"""
