"""The serving app, run by `python -m ml_service` (app.py says where each part lives).

Serving imports the shared model format and redaction, never training or release code: the
image ships without them.
"""
