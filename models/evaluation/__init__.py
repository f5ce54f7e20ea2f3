"""Judging models: metrics and baselines, the promotion gate, plots."""
