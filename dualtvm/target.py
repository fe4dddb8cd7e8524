"""Targets as users type them, turned into what TVM 0.27 accepts (JSON dicts).

TVM 0.27 refuses ``"llvm -mcpu=broadwell"``; users still type it.  :func:`parse_target`
takes that CLI form, a dict, a JSON string or a path to a JSON file, and returns a
:class:`TargetSpec` that knows its TVM target, a stable file-system name
(``llvm-broadwell``) and the CPU features it needs, so we refuse to *run* code built for
an ISA the host lacks before it crashes with SIGILL.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TARGET = "llvm -mcpu=broadwell"
KNOWN_KINDS = ("llvm",)
_FLAGS = {"mcpu": str, "mattr": list, "mtriple": str, "num-cores": int}

#: CPU flags (as /proc/cpuinfo spells them) that code for an ``-mcpu`` may use.
_AVX2 = ("avx", "avx2", "fma", "f16c", "bmi2")
_AVX512 = _AVX2 + ("avx512f", "avx512bw", "avx512dq", "avx512vl")
_ICELAKE = _AVX512 + ("avx512_vnni", "avx512vbmi", "avx512_vbmi2", "avx512_bitalg", "avx512_vpopcntdq")
MCPU_FEATURES: dict[str, tuple[str, ...]] = {
    "x86-64": (),
    "haswell": _AVX2,
    "broadwell": _AVX2,
    "skylake": _AVX2,
    "znver1": _AVX2,
    "znver2": _AVX2,
    "znver3": _AVX2,
    "alderlake": _AVX2 + ("avx_vnni",),
    "skylake-avx512": _AVX512,
    "cascadelake": _AVX512 + ("avx512_vnni",),
    "icelake-server": _ICELAKE,
    "sapphirerapids": _ICELAKE + ("avx512_bf16", "avx512_fp16", "amx_tile"),
    "znver4": _ICELAKE + ("avx512_bf16",),
}
#: ``host_target``'s candidates per CPU vendor, most specific first (LLVM tunes for the named core).
_HOST_MCPUS = {
    "GenuineIntel": ("sapphirerapids", "icelake-server", "cascadelake", "skylake-avx512", "alderlake", "broadwell"),
    "AuthenticAMD": ("znver4", "znver3"),
}
#: LLVM ``-mattr`` names whose cpuinfo flag differs.
_MATTR_TO_FLAG = {"avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni", "sse4.2": "sse4_2", "sse4.1": "sse4_1"}


class TargetError(ValueError):
    """A target string or dict that cannot be turned into a TVM target."""


@dataclass(frozen=True)
class TargetSpec:
    kind: str = "llvm"
    mcpu: str | None = None
    mattr: tuple[str, ...] = ()
    mtriple: str | None = None
    num_cores: int | None = None
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        d: dict = {"kind": self.kind}
        if self.mcpu:
            d["mcpu"] = self.mcpu
        if self.mattr:
            d["mattr"] = list(self.mattr)
        if self.mtriple:
            d["mtriple"] = self.mtriple
        if self.num_cores:
            d["num-cores"] = self.num_cores
        return d

    def with_default_cores(self) -> "TargetSpec":
        """num-cores filled in from this machine (MetaSchedule needs it; tuning and builds must agree)."""
        if self.num_cores is not None:
            return self
        return TargetSpec(self.kind, self.mcpu, self.mattr, self.mtriple, os.cpu_count() or 1, self.source)

    def to_tvm(self):
        import tvm

        check_llvm_cpu(self)
        return tvm.target.Target(self.to_dict())

    @property
    def name(self) -> str:
        """Stable, readable key for tuning logs and build folders, e.g. ``llvm-broadwell``."""
        parts = [self.kind, self.mcpu or "generic"]
        parts += [a.lstrip("+").replace(".", "") for a in self.mattr if a.startswith("+")]
        return "-".join(parts)

    @property
    def cli(self) -> str:
        """The CLI string users type, rebuilt from the parsed fields."""
        s = self.kind
        if self.mcpu:
            s += f" -mcpu={self.mcpu}"
        if self.mtriple:
            s += f" -mtriple={self.mtriple}"
        if self.mattr:
            s += " -mattr=" + ",".join(self.mattr)
        if self.num_cores:
            s += f" -num-cores {self.num_cores}"
        return s

    def required_features(self) -> set[str]:
        feats = set(MCPU_FEATURES.get(self.mcpu or "x86-64", ()))
        for a in self.mattr:
            if a.startswith("+"):
                feats.add(_MATTR_TO_FLAG.get(a[1:], a[1:].replace(".", "_")))
            elif a.startswith("-"):
                feats.discard(_MATTR_TO_FLAG.get(a[1:], a[1:]))
        return feats

    def has_feature(self, flag: str) -> bool:
        return flag in self.required_features()


def _from_dict(d: dict, source: str) -> TargetSpec:
    d = dict(d)
    kind = d.pop("kind", None)
    if kind not in KNOWN_KINDS:
        raise TargetError(f"unknown target kind {kind!r} in {source!r}: expected one of {KNOWN_KINDS}")
    d.pop("keys", None)
    d.pop("tag", None)
    unknown = sorted(set(d) - set(_FLAGS))
    if unknown:
        raise TargetError(f"unknown target option {unknown[0]!r} in {source!r}: known are {sorted(_FLAGS)}")
    mattr = d.get("mattr") or ()
    if isinstance(mattr, str):
        mattr = mattr.split(",")
    bad = [a for a in mattr if not a or a[0] not in "+-"]
    if bad:
        raise TargetError(f"bad -mattr entry {bad[0]!r} in {source!r}: each must start with + or -")
    cores = d.get("num-cores")
    if cores is not None and (not isinstance(cores, int) or cores < 1):
        raise TargetError(f"num-cores must be a positive integer, got {cores!r} in {source!r}")
    mcpu = d.get("mcpu")
    if mcpu is not None and mcpu not in MCPU_FEATURES and mcpu != "native":
        log.warning("mcpu %r is not one dualtvm knows the ISA of; host checks will skip it", mcpu)
    return TargetSpec(kind, mcpu, tuple(mattr), d.get("mtriple"), cores, source)


def check_llvm_cpu(target: TargetSpec) -> None:
    """Raise :class:`TargetError` when LLVM does not know ``target``'s ``-mcpu`` for its triple.

    LLVM itself only logs the mistake and compiles for ``generic`` (no AVX2: a slow build that looks like a
    fast one); a misspelt CPU should stop the run instead.  Imports TVM: call it after ``TVM_NUM_THREADS``.
    """
    if not target.mcpu or target.mcpu == "native" or target.mcpu in MCPU_FEATURES:
        return
    import tvm
    from tvm.target import codegen

    plain = {"kind": target.kind, **({"mtriple": target.mtriple} if target.mtriple else {})}
    known = [str(c) for c in codegen.llvm_get_cpu_archlist(tvm.target.Target(plain))]
    if known and target.mcpu not in known:
        close = difflib.get_close_matches(target.mcpu, known, n=3)
        raise TargetError(f"LLVM does not know -mcpu={target.mcpu} for {target.mtriple or 'this triple'}"
                          + (f": did you mean {' or '.join(close)}?" if close else "")
                          + " (tvm.target.codegen.llvm_get_cpu_archlist lists them)")


def _from_cli(text: str) -> TargetSpec:
    tokens = shlex.split(text)
    if not tokens:
        raise TargetError("empty target string")
    d: dict = {"kind": tokens[0]}
    if tokens[0] not in KNOWN_KINDS:
        raise TargetError(f"unknown target kind {tokens[0]!r} in {text!r}: expected one of {KNOWN_KINDS} "
                          "(or 'host' for this CPU)")
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("-"):
            raise TargetError(f"unexpected token {tok!r} in target {text!r}: flags look like -mcpu=NAME")
        key, eq, value = tok.lstrip("-").partition("=")
        if key not in _FLAGS:
            raise TargetError(f"unknown target flag -{key} in {text!r}: known are " + ", ".join("-" + k for k in _FLAGS))
        if not eq:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("-"):
                raise TargetError(f"target flag -{key} in {text!r} needs a value")
            value = tokens[i + 1]
            i += 1
        if _FLAGS[key] is int:
            try:
                d[key] = int(value)
            except ValueError:
                raise TargetError(f"-{key} needs an integer, got {value!r} in {text!r}") from None
        elif _FLAGS[key] is list:
            d[key] = [v for v in value.split(",")]
        else:
            d[key] = value
        i += 1
    return _from_dict(d, text)


def parse_target(spec: "str | dict | os.PathLike | TargetSpec") -> TargetSpec:
    """CLI string, dict, JSON text, JSON file or ``"host"`` -> :class:`TargetSpec` (raises :class:`TargetError`).

    ``"host"`` is :func:`host_target`: this CPU's own ``-mcpu``, named (e.g. ``llvm-sapphirerapids``) so
    tuning logs and builds made for it are found again on any machine of that class.
    """
    if isinstance(spec, TargetSpec):
        return spec
    if isinstance(spec, dict):
        return _from_dict(spec, json.dumps(spec))
    text = str(spec).strip()
    if text == "host":
        return host_target()
    if text.startswith("{"):
        try:
            return _from_dict(json.loads(text), text)
        except json.JSONDecodeError as e:
            raise TargetError(f"target JSON does not parse: {e}") from e
    if text.endswith(".json") or (os.sep in text and Path(text).exists()):
        path = Path(text)
        if not path.exists():
            raise TargetError(f"target file not found: {path}")
        try:
            return _from_dict(json.loads(path.read_text()), str(path))
        except json.JSONDecodeError as e:
            raise TargetError(f"target file {path} is not valid JSON: {e}") from e
    return _from_cli(text)


def cpuinfo_field(name: str) -> str:
    """The first ``name : value`` line of /proc/cpuinfo ('' where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def host_cpu_features() -> set[str]:
    """Flags of this CPU from /proc/cpuinfo (empty set where it cannot be read)."""
    return set(cpuinfo_field("flags").split())


def host_target(num_cores: int | None = None, features: set[str] | None = None, vendor: str | None = None) -> TargetSpec:
    """A target for this machine: the most specific ``-mcpu`` of its vendor whose features the host has.

    The vendor matters: a Sapphire Rapids Xeon has every flag ``znver4`` needs, but LLVM would then
    tune for an AMD core.  ``features`` / ``vendor`` default to this CPU's (/proc/cpuinfo).
    """
    feats = host_cpu_features() if features is None else set(features)
    vendor = cpuinfo_field("vendor_id") if vendor is None else vendor
    candidates = _HOST_MCPUS.get(vendor, ()) + ("cascadelake", "skylake-avx512", "haswell", "x86-64")
    for mcpu in candidates:
        if set(MCPU_FEATURES[mcpu]) <= feats:
            return TargetSpec("llvm", mcpu, (), None, num_cores, source="host")
    return TargetSpec("llvm", None, (), None, num_cores, source="host")


def missing_host_features(target: TargetSpec, host: set[str] | None = None) -> set[str]:
    """Features the target's code may use that this CPU lacks (empty: safe to run here)."""
    host = host_cpu_features() if host is None else host
    if not host or target.mcpu == "native":
        return set()
    return target.required_features() - host


def refuse_foreign_library(target: TargetSpec, library: str | os.PathLike) -> None:
    """Raise before ``library`` (built for ``target``) is loaded if this CPU lacks features its code may use."""
    missing = missing_host_features(target)
    if missing:
        raise TargetError(f"{library} was built for {target.cli!r}, which needs CPU features this host lacks: "
                          f"{sorted(missing)}; refusing to load it (it would crash with an illegal instruction)")


def check_runs_on_host(target: TargetSpec, strict: bool = False) -> bool:
    """Warn (or raise, if ``strict``) when code for ``target`` cannot run on this CPU."""
    missing = missing_host_features(target)
    if missing:
        msg = f"target {target.cli!r} needs CPU features this host lacks: {sorted(missing)}"
        if strict:
            raise TargetError(msg + "; refusing to run it here (it would crash with an illegal instruction)")
        log.warning("%s; measurements will be skipped", msg)
        return False
    return True
