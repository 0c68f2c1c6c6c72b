"""Ports of third-party models, written for this project (no third-party code is included)."""
