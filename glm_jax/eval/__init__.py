"""Downstream evaluation of checkpoints on Tasks: the loss of an eval split and cloze classification accuracy."""
