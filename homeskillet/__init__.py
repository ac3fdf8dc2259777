"""Homeskillet: covenant-driven fusion and strike scheduling for AI inference."""

__version__ = "0.1.0"
