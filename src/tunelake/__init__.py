"""tunelake: raw post-training data to clean, deduplicated, audited, versioned, training-ready datasets."""

__version__ = "0.1.0"
