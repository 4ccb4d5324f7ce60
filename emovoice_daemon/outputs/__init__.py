"""Outputs: where events go: the bus and schema, JSONL log, history, agent notifier, webhook, API, metrics.

May import: ``config`` only (the bottom of the data path).
"""
