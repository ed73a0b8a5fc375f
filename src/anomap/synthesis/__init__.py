"""Anomaly synthesis for training: GLASS's image-level Local Anomaly Synthesis (LAS) parts."""
