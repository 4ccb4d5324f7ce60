"""Telephone audio codecs."""
