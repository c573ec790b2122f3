"""`python -m ml_service.training`: train, log and register a model version (train.py)."""

import sys

from ml_service.training.train import main

sys.exit(main())
