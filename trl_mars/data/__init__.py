"""Preference data: loading, validation, normalisation and tokenisation."""
