"""pipeline: a reproducible training pipeline for image-classification competitions."""

__version__ = "0.1.0"
