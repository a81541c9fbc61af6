"""Evaluation: pure metric functions (`metrics`) and the fixed-noise stage-1 probe (`probe`)."""
