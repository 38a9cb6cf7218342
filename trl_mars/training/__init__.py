"""Training: `MarsRewardTrainer`, the callback that runs rounds, the Trainer adapter and its guards, the settings."""
