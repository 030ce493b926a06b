"""Experiment scripts; importable so that their helpers can be tested."""
