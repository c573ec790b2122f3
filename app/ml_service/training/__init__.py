"""Training: fit the scikit-learn pipeline reproducibly, log it to MLflow and register it.

`python -m ml_service.training` (see train.py). Imports the shared model format
(`ml_service.model_format`), never serving or release code.
"""
