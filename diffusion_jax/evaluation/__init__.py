"""Evaluation: likelihood of a data split; sample-quality measures (FID, KID, Inception
Score, precision/recall) over the FID Inception network or another feature network."""
