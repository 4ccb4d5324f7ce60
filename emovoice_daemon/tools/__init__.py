"""Tools: the commands users run: ``emovoice-daemon`` CLI, ``emovoice-top``, demo, simulate, batch QA scoring.

May import everything below it; nothing in the daemon imports ``tools``.
"""
