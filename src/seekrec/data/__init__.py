"""Data stage: sources -> canonical tables -> splits -> sequence datasets."""
