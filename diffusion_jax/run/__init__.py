"""Runs: a config parsed and checked as a whole (spec), what a workdir holds, and the
three modes of the command line (train, sample, eval)."""
