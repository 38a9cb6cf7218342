"""Training with MARS rounds: `MarsRewardConfig`, `MarsRewardTrainer`, the callback that runs each round, and the
Trainer adapter, plan guard, checkpoints and start-up checks it relies on."""
