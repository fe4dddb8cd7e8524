"""dualtvm: big-little dual-module inference for recurrent decoders, compiled with TVM (see README.md)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The checkout dualtvm runs from: the committed ``tuning_logs/`` and the git-ignored ``cache/`` and ``build/``."""

BUILD_ROOT = REPO / "build"
"""Where compiled builds go unless a caller says otherwise (``build.BuildConfig.default_out``)."""

BUILD_FIT_ROWS = 60_000
"""Rows (samples × steps) a build fits its little modules on unless told (eval_lm.py's quality fits: 200 000):
a build's fit is a few seconds to minutes, and the latency of a step depends on the ratio, not on the fit."""
