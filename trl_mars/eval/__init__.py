"""Evaluation and reporting: held-out figures, evidence files, reward-model evaluation, win rate, the comparison harness."""
