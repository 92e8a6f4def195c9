"""Shoal: a high-density multi-model server."""

__version__ = "0.1.0"
