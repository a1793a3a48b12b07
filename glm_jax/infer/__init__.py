"""Inference on the model and the data layout only: greedy blank infilling (infilling.py) and the scoring of
candidate fills of a blank (scoring.py)."""
