"""Runs read back and compared: run records, results, parameter counts and budgets, studies over folds and seeds, and report tables."""
