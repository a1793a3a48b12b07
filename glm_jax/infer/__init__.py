"""Inference: greedy blank infilling (infilling.py)."""
