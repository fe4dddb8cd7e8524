#!/usr/bin/env python
"""Where a compiled decode step spends its time, measured inside the step (Table 5's right half).

    python scripts/profile_step.py build/lstm-1500-llvm-broadwell/dual --ratio 0.5

Runs a decode sequence (state fed back, so masks move as in real decoding; its inputs are the held-out data of
the checkpoint the build was made from, as ``bench.py`` decodes them, else Gaussian vectors, or ``--inputs``) through
the build's bytecode VM (``decoder-bytecode.so``: the step of ``decoder.so`` is compiled to native code and
calls no instrument) with an instrument that timestamps every kernel call, and prints the median ms per
step of projection / little / mask / big / assembly kernels (each with the bytes it reads, ``traffic.part_bytes`` at
the masks the sequence made, and the rate it read them at) beside the whole instrumented step and the step as
the benchmark times it (``decoder.so``, no instrument), and that step again with every kernel emptied (what the VM
itself costs).  Kernels timed alone look faster than they are in a step, where the big GEMV's stream has just
evicted the rest.  ``--ablate`` also times, without any instrument, the step compiled again with one more part
emptied at a time (big GEMV first, projection last): each part's marginal cost (``bench.step_ablation``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (HelpFormatter, add_step_inputs_options, positive_int, step_inputs_or_exit,  # noqa: E402
                         unit_ratio)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("build", help="a build folder (…/dual or …/dense) written by scripts/build.py")
    p.add_argument("--ratio", type=unit_ratio, default=None, help="insensitive ratio (dual builds; default: as built)")
    p.add_argument("--steps", type=positive_int, default=100,
                   help="decode steps run (the first, a warm-up, is not counted)")
    add_step_inputs_options(p)
    p.add_argument("--threads", type=positive_int, default=None, help="TVM threads (default: all cores)")
    p.add_argument("--cold", action="store_true",
                   help="cold weights: before every timed step sweep twice the last-level cache (at least 64 MB), "
                        "then step a copy of the build on its own weights (bench.measure)")
    p.add_argument("--ablate", type=positive_int, default=None, metavar="ROUNDS",
                   help="also time the step with one more part emptied at a time (compiled here from the build's spec "
                        "and its target's tuning log), ROUNDS interleaved rounds: each part's marginal ms per step")
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be at least 2 (the first step is a warm-up)")
    os.environ.setdefault("TVM_NUM_THREADS", str(a.threads or os.cpu_count()))  # before tvm is imported
    import numpy as np

    from dualtvm.bench import (Evictor, decoder_engine, measure, measured_insensitive_ratio, step_ablation,
                               step_breakdown)
    from dualtvm.traffic import PARTS, layers_part_bytes
    from dualtvm.manifest import BuildError
    from dualtvm.runtime import CompiledDecoder, sequence_runner

    try:
        dec = CompiledDecoder(a.build)
        if a.ratio is not None:
            dec.set_insensitive_ratio(a.ratio)
    except (BuildError, ValueError) as e:
        p.error(str(e))
    xs, source = step_inputs_or_exit(p, a, dec.manifest["model"], dec.spec.layers[0].input_size, a.steps)
    evict, twin = (Evictor(), dec.twin()) if a.cold else (None, None)  # one twin (a copy of the weights) serves both
    b = step_breakdown(dec, xs, evict, twin)
    engines = [decoder_engine("step", a.ratio or 0.0, dec, xs, twin),
               decoder_engine("vm", a.ratio or 0.0, dec, xs, twin, vm=dec.vm_only())]  # the step, kernels emptied
    timed_runs = measure(engines, a.steps, 1, evict or False)
    kernels = sum(b[part] for part in PARTS)
    layers = dec.spec.layers
    measured = measured_insensitive_ratio(dec, sequence_runner(dec, xs), a.steps) if dec.spec.dual else None
    nbytes = layers_part_bytes(layers, layers[0].k, None if measured is None else 1 - measured, layers[0].little_bits)
    kind = f"dual, ratio {a.ratio} (measured {measured:.3f})" if dec.spec.dual else "dense"
    print(f"{a.build} ({kind}), median ms per step over {a.steps - 1} steps of {source}, "
          f"{'cold weights' if a.cold else 'warm'} cache; each part's bytes (traffic.part_bytes) and the rate they "
          "were read at:")
    for part in PARTS:
        rate = f"{nbytes[part] / b[part] / 1e6:7.1f} GB/s" if nbytes[part] and b[part] > 0 else ""
        print(f"  {part:10s} {b[part]:8.4f}  {nbytes[part] / 1e3:9.1f} KB  {rate}")
    print(f"  {'kernels':10s} {kernels:8.4f}")
    print(f"  {'step':10s} {b['step']:8.4f}  (the rest: the bytecode VM and the timing instrument)")
    timed, vm = (float(np.median(timed_runs[name])) * 1e3 for name in ("step", "vm"))
    print(f"  {'timed':10s} {timed:8.4f}  (the step as bench.py times it: decoder.so, no instrument)")
    print(f"  {'vm':10s} {vm:8.4f}  (the timed step with every kernel emptied: its calls, allocations and checks)")
    if a.ablate:
        ablation = step_ablation(dec, xs, a.ablate, evict, twin)
        print(f"marginal ms per step, the step compiled here again with one more part emptied at a time (no "
              f"instrument; {a.ablate} interleaved rounds):")
        for part, ms in ablation.items():
            note = {"step": "(nothing emptied)", "vm": "(every kernel emptied)"}.get(part, "")
            print(f"  {part:10s} {ms:8.4f}  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
