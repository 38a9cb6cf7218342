"""Evaluation and reporting: reward-model evaluation, held-out figures, evidence files and run reports, win rate,
and the comparison harness (`compare`)."""
