"""Defenses: param-tree transplant and two-stage training (TTS); RoLSS/SSF are skip settings of the models."""
