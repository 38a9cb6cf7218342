"""The recipes' command line: the argument parser, set-up errors and logging (`arguments`), and the reward-model
recipe as importable code (`recipe`)."""
