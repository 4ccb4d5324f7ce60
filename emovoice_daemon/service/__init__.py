"""Service: the running daemon: wiring of every stage (daemon), lifecycle, systemd notify.

May import every stage package and ``calls``/``config``; never ``tools``.
"""
