"""The round strategies MARS is compared with: AdaBoost (per-pair loss weights) and West-of-N (best vs worst of N
scored candidates)."""
