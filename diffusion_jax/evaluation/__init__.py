"""Evaluation: likelihood of a data split; sample-quality measures."""
