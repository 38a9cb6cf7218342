"""Aligning a policy with a MARS reward model: the reward function and the RLOO/GRPO/PPO wiring."""
