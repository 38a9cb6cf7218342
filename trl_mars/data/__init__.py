"""Preference data: loading, validating and normalising pairs (`preferences`), and tokenising a round's synthetic
pairs like the originals (`tokenization`)."""
