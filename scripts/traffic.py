#!/usr/bin/env python
"""Figure 4: bytes read and operations per decode step, the dense layer against its little module (no timing).

    python scripts/traffic.py                        # -> results/traffic.json, results/traffic.png

For every model shape, the paper's little module (eq. 3's k at --eps) and each of --k-values, at each W_LL precision of
--little-bits: MB and millions of operations (a multiply and an add are two, whatever the precision, as the paper
counts) of the dense step and of the little module, the little module's share of each, its break-even ratio, and
the dual step's share of the dense step's bytes and operations at --ratios (dualtvm.traffic).  Shapes alone decide
these numbers; bench.py's rows give the same accounting at the ratio their masks measured.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dualtvm.cli import (  # noqa: E402
    HelpFormatter, choice_list, command_line, model_names, positive_int_list, ratio_list)

FIGURE4_MODELS = ("lstm-750", "lstm-1500", "gru-750", "gru-1500", "gnmt-1024-1024", "gnmt-1024-2048")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--models", type=model_names, default=FIGURE4_MODELS, help="model shapes (dualtvm.registry.MODELS)")
    p.add_argument("--eps", type=float, default=0.5, help="ε of eq. 3 (the paper's little module's k)")
    p.add_argument("--k-values", type=positive_int_list, default=(128,),
                   help="further k values (set directly, as a learned projection is), each its own little module")
    p.add_argument("--little-bits", type=choice_list((8, 4), int, "precisions"), default=(8, 4),
                   help="W_LL precisions: 8, 4 or 8,4")
    p.add_argument("--ratios", type=ratio_list, default=(0.3, 0.5, 0.7, 0.9), help="insensitive ratios of the dual step")
    p.add_argument("--out", default="results/traffic.json", help="results file (a .png beside it)")
    a = p.parse_args(argv)
    from dualtvm.results import write_results
    from dualtvm.traffic import plot_traffic, traffic_row

    try:
        rows = [traffic_row(m, a.eps, k, bits, a.ratios)
                for m in a.models for k in (None, *a.k_values) for bits in a.little_bits]
    except ValueError as e:
        p.error(str(e))
    command = command_line(__file__, argv)
    out = write_results(a.out, "traffic", rows, command)
    plot_traffic(rows, str(out.with_suffix(".png")))
    for r in rows:
        print(f"{r['model']:16s} {r['little_module']:22s} INT{r['little_bits']}: little {r['little_bytes_pct']:5.1f} % of the "
              f"bytes, {r['little_ops_pct']:5.1f} % of the operations; dual step at 50 %: "
              f"{r['dual_bytes_pct'].get('0.5', float('nan')):5.1f} % / {r['dual_ops_pct'].get('0.5', float('nan')):5.1f} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
