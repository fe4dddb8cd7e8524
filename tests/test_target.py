import json
import os

import pytest

from dualtvm.target import (MCPU_FEATURES, TargetError, TargetSpec, check_llvm_cpu, host_cpu_features, host_target,
                            missing_host_features, parse_target)


@pytest.mark.parametrize("text,expected,name", [
    ("llvm -mcpu=broadwell", {"kind": "llvm", "mcpu": "broadwell"}, "llvm-broadwell"),
    ("llvm -mcpu=skylake-avx512 -num-cores 4", {"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4},
     "llvm-skylake-avx512"),
    ("llvm -mtriple=x86_64-linux-gnu -mattr=+avx2,+fma",
     {"kind": "llvm", "mattr": ["+avx2", "+fma"], "mtriple": "x86_64-linux-gnu"}, "llvm-generic-avx2-fma"),
    ('{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}', {"kind": "llvm", "mcpu": "znver4", "num-cores": 2},
     "llvm-znver4"),
])
def test_parse_good(text, expected, name):
    t = parse_target(text)
    assert t.to_dict() == expected
    assert t.name == name
    assert parse_target(t.cli) == t  # the CLI form round-trips
    tvm_target = t.to_tvm()
    assert str(tvm_target.kind) == "llvm"
    if "mcpu" in expected:
        assert str(tvm_target.attrs["mcpu"]) == expected["mcpu"]


def test_parse_dict_and_file(tmp_path):
    d = {"kind": "llvm", "mcpu": "broadwell", "num-cores": 2}
    assert parse_target(d).to_dict() == d
    f = tmp_path / "t.json"
    f.write_text(json.dumps(d))
    assert parse_target(str(f)).to_dict() == d


@pytest.mark.parametrize("text,needle", [
    ("cuda -arch=sm_80", "unknown target kind 'cuda'"),
    ("llvm -mcpuu=broadwell", "unknown target flag -mcpuu"),
    ("llvm -num-cores four", "-num-cores needs an integer"),
    ("llvm -mcpu", "-mcpu in 'llvm -mcpu' needs a value"),
    ("llvm broadwell", "unexpected token 'broadwell'"),
    ("llvm -mattr=avx2", "bad -mattr entry 'avx2'"),
    ('{"kind": "llvm", "foo": 1}', "unknown target option 'foo'"),
    ("", "empty target string"),
    ("{not json", "does not parse"),
    ("missing/target.json", "target file not found"),
])
def test_parse_bad(text, needle):
    with pytest.raises(TargetError) as e:
        parse_target(text)
    assert needle in str(e.value)


def test_unknown_mcpu_is_refused_before_llvm_falls_back_to_generic():
    # LLVM only logs a mistyped -mcpu and builds for "generic"; we stop with the names it meant
    with pytest.raises(TargetError, match="did you mean broadwell"):
        check_llvm_cpu(parse_target("llvm -mcpu=brodwell"))
    with pytest.raises(TargetError, match="-mcpu=pentium9"):
        parse_target("llvm -mcpu=pentium9").to_tvm()
    check_llvm_cpu(parse_target("llvm -mcpu=tigerlake"))  # LLVM knows it, dualtvm has no ISA table for it: allowed
    assert str(parse_target("llvm -mcpu=tigerlake").to_tvm().attrs["mcpu"]) == "tigerlake"


def test_host_features_and_isa_check():
    host = {"avx", "avx2", "fma", "f16c", "bmi2", "sse4_2"}
    assert missing_host_features(parse_target("llvm -mcpu=broadwell"), host) == set()
    missing = missing_host_features(parse_target("llvm -mcpu=cascadelake"), host)
    assert "avx512_vnni" in missing and "avx512f" in missing
    assert missing_host_features(parse_target("llvm -mattr=+avx512vnni"), host) == {"avx512_vnni"}
    assert isinstance(host_cpu_features(), set)
    assert TargetSpec(mcpu="broadwell").has_feature("avx2")


@pytest.mark.parametrize("vendor,features,mcpu", [
    ("GenuineIntel", set(MCPU_FEATURES["sapphirerapids"]) | {"sse4_2"}, "sapphirerapids"),
    ("GenuineIntel", set(MCPU_FEATURES["cascadelake"]), "cascadelake"),
    ("GenuineIntel", set(MCPU_FEATURES["broadwell"]), "broadwell"),
    ("AuthenticAMD", set(MCPU_FEATURES["sapphirerapids"]), "znver4"),  # an AMD core is tuned as one
    ("AuthenticAMD", set(MCPU_FEATURES["znver3"]), "znver3"),
    ("SomeVendor", set(MCPU_FEATURES["cascadelake"]), "cascadelake"),
    ("SomeVendor", {"sse4_2"}, "x86-64"),
])
def test_host_target_names_the_vendors_core(vendor, features, mcpu):
    t = host_target(features=features, vendor=vendor)
    assert t.mcpu == mcpu
    assert missing_host_features(t, features) == set()  # its code runs on the host it was chosen for


def test_parse_host():
    t = parse_target("host")
    assert t == host_target() and t.source == "host"
    assert missing_host_features(t) == set()
    with pytest.raises(TargetError, match="or 'host'"):
        parse_target("hots")


def test_machine_description_names_the_hosts_core():
    """Results rows are keyed by machine: two CPUs a KVM guest names alike ('AMD EPYC') must not share one key."""
    from dualtvm.results import machine_description

    mcpu = host_target().mcpu
    assert machine_description().endswith(f"{f' ({mcpu})' if mcpu else ''}, {os.cpu_count()} cores")
