"""The recipes' command line: arguments, errors, logging set-up and the reward-model recipe."""
