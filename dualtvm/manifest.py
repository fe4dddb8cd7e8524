"""The ``manifest.json`` of a build folder: written by every build, read back to load it or to reuse it.

Three builds write one beside their library and ``params.npz`` — a decoder step (:mod:`dualtvm.decoder`), a
linear layer (:mod:`dualtvm.linear`) and a whole GNMT decode step (:mod:`dualtvm.gnmt_step`) — each with its
format ``version``, its target, hashes of the weights (and little modules) it holds and the fingerprint of the
schedules the tuning log chose for its kernels.  Two readers with opposite needs: *loading* a build refuses, with
a clear error, a folder that is incomplete, of another format or for an ISA this CPU lacks (it would die of
SIGILL); *reusing* one (the ``built_for`` checks of the callers that build on demand) rebuilds instead.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class BuildError(RuntimeError):
    """A build folder that cannot be run here: missing files, wrong version, ISA or model."""


def write_manifest(out_dir: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``manifest`` with the git revision of the code that built it (``-dirty`` if uncommitted)."""
    from .checkpoint import git_revision

    (Path(out_dir) / MANIFEST).write_text(json.dumps({**manifest, "git": git_revision()}, indent=2))


def load_manifest(build_dir: str | os.PathLike, library: str, version: int, what: str) -> dict[str, Any]:
    """The manifest of a complete build folder (``manifest.json``, ``library``, ``params.npz``) of format
    ``version`` whose library this CPU can run; :class:`BuildError` saying which of those fails otherwise.
    ``what`` names the build in the message (e.g. "dualtvm build folder (run scripts/build.py)")."""
    from .target import parse_target, refuse_foreign_library

    d = Path(build_dir)
    for f in (MANIFEST, library, "params.npz"):
        if not (d / f).exists():
            raise BuildError(f"{d / f} is missing: not a {what}")
    manifest = json.loads((d / MANIFEST).read_text())
    if manifest.get("version") != version:
        raise BuildError(f"{d}: manifest version {manifest.get('version')}, this dualtvm reads {version}")
    refuse_foreign_library(parse_target(manifest["target"]), d / library)
    return manifest


def reusable_manifest(build_dir: str | os.PathLike, version: int) -> dict[str, Any] | None:
    """The manifest of ``build_dir`` if it holds a build of format ``version``; None when there is none or it is
    of an older format: the caller builds (an old build is replaced, not refused)."""
    f = Path(build_dir) / MANIFEST
    if not f.exists():
        return None
    manifest = json.loads(f.read_text())
    return manifest if manifest.get("version") == version else None
