"""Fixtures for the user tools' tests."""
from tests.support.scripted_daemon import scripted_daemon  # noqa: F401  (fixture)
