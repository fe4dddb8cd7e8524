from __future__ import annotations

import os
from pathlib import Path

import pytest

from dualtvm.data import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = default_data_dir()
    if not (d / "ptb" / "train.txt").exists():
        pytest.skip(f"real corpora not found under {d} (set DUALTVM_DATA)")
    return d


@pytest.fixture
def tiny_corpus(tmp_path: Path) -> Path:
    words = "the cat sat on the mat . a dog ran to the cat .".split()
    for split, n in (("train", 60), ("valid", 10), ("test", 10)):
        lines = [" ".join(words[(i % 5):] + words[: (i % 5)]) for i in range(n)]
        (tmp_path / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return tmp_path


os.environ.setdefault("TVM_NUM_THREADS", "2")
