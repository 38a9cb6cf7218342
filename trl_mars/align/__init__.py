"""Aligning a policy with a trained MARS reward model: the reward function for TRL's online trainers, the
RLOO/GRPO/PPO wiring, and randomly initialised policies built offline (`tiny_policy`)."""
