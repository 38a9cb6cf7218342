"""The MARS method itself: margin scoring, budget allocation, semantic labels, one augmentation round, and the
strategy protocol and registry that every round strategy plugs into."""
