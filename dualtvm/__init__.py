"""dualtvm: big-little dual-module inference for recurrent decoders, compiled with TVM (see README.md)."""
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
"""The checkout dualtvm runs from: the committed ``tuning_logs/`` and the git-ignored ``cache/`` and ``build/``."""

BUILD_ROOT = REPO / "build"
"""Where compiled builds go unless a caller says otherwise (``<model>-<target name>[variant]/``)."""
