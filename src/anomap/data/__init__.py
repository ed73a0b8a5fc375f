"""Datasets on disk: layouts, image reading with validation, torch datasets, synthetic data."""
