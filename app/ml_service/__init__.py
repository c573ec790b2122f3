"""ml-service: the thin serving app and training pipeline."""

__version__ = "0.2.0"
