"""The baselines MARS is compared with: AdaBoost loss weights and West-of-N."""
