"""Analyses of the study: per-stage gradient flow, RepVGG equivalence, false positives (PNG figures)."""
