"""Analysis of SRAM-PUF measurements and of the fuzzy extractor's codes (no hil imports)."""
