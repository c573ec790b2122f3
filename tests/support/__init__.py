"""Shared test helpers: free ports, HTTP waits, a real MLflow tracking server, training runs."""
