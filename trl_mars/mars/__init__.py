"""The method: margins, allocation, semantic labels, the MARS round, and the strategy protocol."""
