"""Release tooling: the quality gate that `scripts/gitops.py release` and `promote` run before a
model version reaches an environment. Needs the training extras (full MLflow); never shipped in
the serving image.
"""
