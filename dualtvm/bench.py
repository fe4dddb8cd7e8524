"""Per-step latency, batch 1: compiled dense/dual steps beside the peers, warm and cold cache.

Every engine runs the same decode sequence (inputs change each step, the state is fed back,
so dual-module masks are the real, moving ones — a fixed mask would keep its rows in L3 and
fake the speed-up).  Engines are interleaved round by round, medians and IQRs are taken per
engine, and speed-ups are paired: the median over rounds of each round's ratio (:func:`paired_speedup`).
Cold cache = a buffer twice the last-level cache (at least 64 MB) is swept between steps, as the
paper evicts the LLC for each RNN cell of a decoder: a fixed 64 MB sweep left most of a 480 MB L3
warm (LSTM-1500 dense step: 2.4 ms after 64 MB, 3.1 ms after 1 GB, 1.5 ms warm).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import BUILD_FIT_ROWS, BUILD_ROOT
from .fixed_cost import plot_latest_machine
from .paper import LSTM_1500_SPEEDUP_AT_HALF
from .traffic import PARTS, layers_part_bytes, step_ops

log = logging.getLogger(__name__)

EVICT_MIN_BYTES = 64 << 20


def last_level_cache_bytes() -> int | None:
    """Size of this CPU's last-level cache from sysfs (None where it cannot be read)."""
    best: tuple[int, int] | None = None
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            level, size = int((d / "level").read_text()), (d / "size").read_text().strip()
        except (OSError, ValueError):
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
        try:
            nbytes = int(size.rstrip("KMG")) * scale
        except ValueError:
            continue
        if best is None or level > best[0]:
            best = (level, nbytes)
    return best[1] if best else None


def evict_bytes(llc_bytes: int | None = None) -> int:
    """Bytes a cold-cache sweep covers: twice the last-level cache, so none of a step's lines survive it."""
    llc = last_level_cache_bytes() if llc_bytes is None else llc_bytes
    return max(EVICT_MIN_BYTES, 2 * (llc or 0))


@dataclass
class Engine:
    name: str
    ratio: float
    prepare: Callable[[], None]  # reset state before a round
    step: Callable[[int], None]  # run step i of the sequence
    twin: "Engine | None" = None  # the same engine over its own copy of the weights (cold mode, see measure)


def decoder_engine(name: str, ratio: float, dec, xs: list[np.ndarray], twin=None, vm=None) -> Engine:
    """An engine decoding ``xs`` with a :class:`~dualtvm.runtime.CompiledDecoder` (through ``vm``, another VM over
    its step such as ``dec.vm_only()``, where given); ``twin`` (``dec.twin()``) runs through the same VM, so in
    cold mode it warms that VM but not ``dec``'s weights."""
    from .runtime import sequence_runner

    prepare, step, _ = sequence_runner(dec, xs, vm=vm)
    other = None
    if twin is not None:
        twin_prepare, twin_step, _ = sequence_runner(twin, xs, vm=vm or dec.vm)
        other = Engine(f"{name} (twin)", ratio, twin_prepare, twin_step)
    return Engine(name, ratio, prepare, step, other)


class Evictor:
    """Sweeps a buffer larger than the last-level cache (reads and writes every line; only reads with
    ``read_only``, which leaves no dirty lines to write back under the next run); default :func:`evict_bytes`."""

    def __init__(self, nbytes: int | None = None, read_only: bool = False) -> None:
        self.nbytes = evict_bytes() if nbytes is None else nbytes
        self.buf = np.ones(self.nbytes // 4, np.float32)
        self.read_only = read_only

    def __call__(self) -> None:
        if self.read_only:
            self.buf.sum()
        else:
            self.buf += 1.0


def measure(engines: list[Engine], steps: int, rounds: int, cold: "bool | Evictor", pause_s: float = 0.05) -> dict[str, np.ndarray]:
    """Interleaved rounds; per engine an array of per-step seconds.

    ``cold`` (an :class:`Evictor`, or True for the default one): the paper's "cold cache at the execution
    of each RNN cell", as in a seq2seq decoder, where the cells run before this one stream other weights
    through the same code.  Before every timed step the sweep evicts everything, then the engine's
    ``twin`` (where it has one) runs the same step untimed on its own weights: the code, the runtime's
    state and the page tables are warm again, this engine's weights still come from DRAM.  Without a
    twin the timed step also pays for fetching all of those (a sweep of 1 GB made an empty TVM step
    cost ~2 ms here: every page walk misses too).
    """
    evict = cold if isinstance(cold, Evictor) else Evictor() if cold else None
    times: dict[str, list[float]] = {e.name: [] for e in engines}
    for r in range(rounds):
        order = engines if r % 2 == 0 else engines[::-1]
        for e in order:
            e.prepare()
            if evict is not None and e.twin is not None:
                e.twin.prepare()
            e.step(0)  # warm-up step of the round (not timed)
            time.sleep(pause_s)  # let the other engine's thread pool fall asleep
            for i in range(1, steps):
                _go_cold(evict, e.twin.step if e.twin is not None else None, i)
                t0 = time.perf_counter()
                e.step(i)
                times[e.name].append(time.perf_counter() - t0)
    return {k: np.array(v) for k, v in times.items()}


def per_round_medians(times: dict[str, np.ndarray], rounds: int) -> dict[str, np.ndarray]:
    """Each engine's median step time in each round of :func:`measure` (its times come round by round)."""
    return {k: np.median(v.reshape(rounds, -1), axis=1) for k, v in times.items()}


def paired_speedup(per_round: dict[str, np.ndarray], engine: str, reference: str) -> tuple[float, float, float]:
    """``reference``'s step time over ``engine``'s, round by round, as (median, 25th, 75th percentile) over the rounds.

    Both ran in the same round, a second or two apart: the load of a shared host's neighbours, which
    drifts over seconds, cancels in each round's ratio, where a ratio of medians pooled over all rounds
    keeps it; and the quartiles say how far one run's ratio can be trusted. (It does not make runs agree
    better than the host allows: three LSTM-1500 runs in a row gave 1.63 / 1.56 / 1.66 paired, 1.65 / 1.60 /
    1.68 pooled at 50 % warm, about one run's interquartile range apart.)
    """
    r = per_round[reference] / per_round[engine]
    return float(np.median(r)), float(np.percentile(r, 25)), float(np.percentile(r, 75))


def _go_cold(evict: Callable[[], None] | None, twin_step: Callable[[int], None] | None, i: int) -> None:
    """The cold order before timed step ``i`` (no-op warm): the sweep evicts everything, then the twin's
    untimed step warms code, runtime and page tables but not the timed engine's weights."""
    if evict is not None:
        evict()
        if twin_step is not None:
            twin_step(i)


def measured_insensitive_ratio(dec, runner: tuple, steps: int) -> float:
    """Mean fraction of insensitive outputs while ``dec`` (a dual build, at its current thresholds) decodes the
    ``steps`` inputs of ``runner`` (``runtime.sequence_runner``'s closures over it): one untimed pass."""
    from .decoder import state_names

    prepare, step, box = runner
    prepare()
    n_state = sum(len(state_names(s)) for s in dec.spec.layers)
    fractions = []
    for i in range(steps):
        step(i)
        pos = np.concatenate([box["out"][1 + n_state + j].numpy() for j in range(len(dec.spec.layers))])
        fractions.append(float((pos < 0).mean()))  # a mask holds the row's position, -1 where insensitive
    return float(np.mean(fractions))


def summarize(t: np.ndarray) -> tuple[float, float]:
    q1, med, q3 = np.percentile(t * 1e3, [25, 50, 75])
    return float(med), float(q3 - q1)


def stream_bandwidth(nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """STREAM-like read bandwidth (GB/s): numpy sum of a 1 GB array (one thread), best of ``repeat``."""
    a = np.ones(nbytes // 4, np.float32)
    return _best_gbps(lambda: a.sum(), nbytes, repeat)


def gemv_bandwidth(threads: int, nbytes: int = 1 << 30, repeat: int = 5, width: int = 4096) -> float:
    """Read bandwidth (GB/s) of a batch-1 fp32 GEMV over ``nbytes`` of weights on 2 MB pages, with PyTorch on
    ``threads`` threads (best of ``repeat``): the bound a step's engines share, on their own threads and pages.

    :func:`stream_bandwidth` (one thread, 4 KB pages) understates it: on the 2-core Intel VM 5.5 GB/s for the
    numpy sum, 21 GB/s for this, where the dense LSTM-1500 step streamed its 72 MB cold at 27 GB/s.
    """
    import torch

    w = _touched_floats(nbytes)
    rows = torch.from_numpy(w[: w.size // width * width]).view(-1, width)
    x = torch.ones(width)
    return _on_threads(threads, lambda: _best_gbps(lambda: torch.mv(rows, x), rows.numel() * 4, repeat))


def read_bandwidth(threads: int, nbytes: int = 1 << 30, repeat: int = 5) -> float:
    """STREAM-like read bandwidth (GB/s) on ``threads`` threads: PyTorch's parallel sum over ``nbytes`` on 2 MB pages,
    best of ``repeat`` — the reference a step's achieved GB/s is held against (``fraction_of_read_bw`` of a row).

    The numpy sum of :func:`stream_bandwidth` runs one thread, and :func:`gemv_bandwidth` measures PyTorch's GEMV
    more than the memory: on the 2-core AMD EPYC both read 24 GB/s where this reads 49 and the dense TVM
    LSTM-1500 step streamed its 72 MB at 38–42 (session 27).
    """
    import torch

    w = torch.from_numpy(_touched_floats(nbytes))
    return _on_threads(threads, lambda: _best_gbps(lambda: w.sum(), w.numel() * 4, repeat))


def _touched_floats(nbytes: int) -> np.ndarray:
    """``nbytes`` of float32 on 2 MB pages where the kernel gives them (:mod:`dualtvm.memory`), every page touched."""
    from .memory import huge_page_arena

    arena = huge_page_arena(nbytes)
    w = np.ones(nbytes // 4, np.float32) if arena is None else arena[: nbytes // 4 * 4].view(np.float32)
    w[:] = 1.0  # touched: every page present before timing
    return w


def _on_threads(threads: int, fn: Callable[[], float]) -> float:
    """``fn()`` with PyTorch on ``threads`` threads, its thread count given back after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def _best_gbps(read: Callable[[], object], nbytes: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        read()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


@dataclass
class BenchConfig:
    models: tuple[str, ...] = ("lstm-1500",)
    target: str = "llvm -mcpu=broadwell"
    ratios: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    steps: int = 60
    cold_steps: int = 20  # per round in cold mode: each step waits for a sweep of twice the LLC (~70 ms at 1 GB)
    rounds: int = 5
    threads: int = 2
    caches: tuple[str, ...] = ("warm", "cold")
    build_root: str = str(BUILD_ROOT)
    max_rows: int = BUILD_FIT_ROWS  # rows the builds' little modules are fitted on (build.BuildConfig.max_rows)
    checkpoint: str | None = None
    decoder_layer: int = 0  # which decoder layer of a seq2seq checkpoint (gnmt-1024-2048 from a trained GNMT)
    data_dir: str | None = None  # data root of a checkpoint's corpus (default $DUALTVM_DATA)
    peers: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    little_bits: tuple[int, ...] = (8,)  # one dual-module engine per W_LL precision (8: "tvm-dual", 4: "tvm-dual-int4")
    int8_float: bool = False  # also the INT8 little module on floats ("tvm-dual-int8float"; tvm-dual runs on codes on AVX2)
    eps: float = 0.5  # eq. 3's ε (sets k); rows of another ε are labelled ``<model>-eps<ε>``
    k: int | None = None  # k set directly (overrides eps); rows ``<model>-k<k>`` (little.size_suffix)
    projection: str = "sparse"  # the little modules' projection; learned ones' rows are ``<model>[-eps<ε>]-learned``
    contribution: bool = False  # also each little module with contribution-score masks ("tvm-dual[-int4]-contribution")
    reuse_builds: bool = False  # default: rebuild, so the current schedules/tuning logs are what is measured


def big_layers_from_params(dec) -> list:
    """The big layers as the decoder holds them (LSTM: b_ih carries the summed bias, b_hh = 0)."""
    import torch

    from .little import BigLayer

    layers = []
    for s, p in zip(dec.spec.layers, dec.params):
        w = torch.from_numpy(p["w"])  # [W_ih | W_hh], each half padded (decoder.pack_layer)
        biases = ((torch.from_numpy(p["bias"]), torch.zeros(s.n)) if s.rnn_type == "LSTM"
                  else (torch.from_numpy(p["b_ih"]), torch.from_numpy(p["b_hh"])))
        layers.append(BigLayer(s.rnn_type, w[:, : s.input_size].clone(), w[:, s.dxp : s.dxp + s.hidden].clone(),
                               *biases))
    return layers


STEP_PARTS = (("project", "projection"), ("little_gemv", "little"), ("masked_gemv", "big"), ("gemv", "big"),
              ("mask", "mask"))  # first matching prefix wins; the rest (concat, assembly, cell) is "assembly"


def kernel_part(name: str) -> str:
    return next((part for prefix, part in STEP_PARTS if name.startswith(prefix)), "assembly")


def step_breakdown(dec, xs: list[np.ndarray], evict: Callable[[], None] | None = None, twin=None) -> dict[str, float]:
    """Table 5's right half, measured inside the real step: ms per step in projection / little / mask /
    big / assembly kernels and the whole ``step`` (medians over the steps of ``xs``, state fed back,
    real moving masks).

    A VM instrument timestamps every kernel call, so each kernel is timed where it runs: after the
    big GEMV's stream has evicted the little module's weights (timed alone, the small kernels looked
    2–4× faster than they are in a step).  ``step`` is timed in the same instrumented pass, so
    step − Σ parts is the VM's own work plus the instrument's (a few µs per VM call, builtins included).
    ``evict`` (e.g. an :class:`Evictor`) runs before each timed step: the cold-cache breakdown, where
    ``twin`` (``dec.twin()``) then steps through the same VM untimed, as in :func:`measure`.
    """
    return _in_ms(_part_medians(_InstrumentedSequence(dec, xs, twin).run(evict)))


def step_breakdowns(decs: dict[str, object], xs: list[np.ndarray], rounds: int, evict: Callable[[], None] | None = None,
                    twins: dict[str, object] | None = None) -> dict[str, dict[str, float]]:
    """:func:`step_breakdown` of several builds, interleaved round by round as :func:`measure` times
    them: per part the median over rounds of each round's median.  One pass per build, each a few seconds after
    the last, took a neighbour's burst whole on a shared host (a 50 % LSTM-1500 row once read 12 ms for a
    1.1 ms step); interleaved, a burst lands in one round of every build and the median drops it.  ``evict`` and
    ``twins`` (a twin per build, by name): the cold breakdown, each timed step after a sweep and its twin's step."""
    runs = [(name, _InstrumentedSequence(dec, xs, (twins or {}).get(name))) for name, dec in decs.items()]
    per_round: dict[str, list[dict[str, float]]] = {name: [] for name in decs}
    for r in range(rounds):
        for name, run in (runs if r % 2 == 0 else runs[::-1]):
            per_round[name].append(_part_medians(run.run(evict)))
    return {name: _in_ms({part: float(np.median([m[part] for m in medians])) for part in (*PARTS, "step")})
            for name, medians in per_round.items()}


ABLATION_ORDER = ("big", "assembly", "mask", "little", "projection")
"""The order :func:`step_ablation` empties a step's parts in: each after the parts that read what it writes, so no
kernel still running reads an emptied one's output (the mask's count bounds the rows the big GEMV reads)."""


def step_ablation(dec, xs: list[np.ndarray], rounds: int, evict: Callable[[], None] | None = None, twin=None,
                  database=None) -> dict[str, float]:
    """Each part's marginal ms per step in the uninstrumented step: the step compiled again with the parts of
    :data:`ABLATION_ORDER` emptied one more at a time, every variant timed by :func:`measure` (interleaved, medians);
    a part costs the step without the parts before it minus the step without it too.  ``step`` is the variant with
    nothing emptied, ``vm`` the one with every kernel emptied; the parts and ``vm`` sum to ``step``.

    :func:`step_breakdown`'s instrument runs Python between the kernels, and its parts summed to more than the step
    timed without it (GNMT-1024-1024 at 50 %: 0.42 against 0.37 ms); here nothing runs between them, and a part's
    cost includes what it does to the others (the big GEMV's stream evicting the little module's weights).
    ``database``: the tuning log the kernels are scheduled from (default: the build's target's, as ``build.py``).
    ``evict`` and ``twin``: the cold variant, as in :func:`measure`."""
    import tvm
    from tvm import relax

    from .decoder import build_ir, vm_executable, without_kernels
    from .tuning import load_database

    mod = build_ir(dec.spec, dec.target, load_database(dec.target) if database is None else database)
    names = [gv.name_hint for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]
    parts = [p for p in ABLATION_ORDER if any(kernel_part(n) == p for n in names)]
    engines = []
    for i in range(len(parts) + 1):
        exe = vm_executable(without_kernels(mod, lambda name, gone=set(parts[:i]): kernel_part(name) in gone),
                            dec.target)
        vm = relax.VirtualMachine(exe, dec.dev)
        engines.append(decoder_engine(f"without {', '.join(parts[:i]) or 'nothing'}", 0.0, dec, xs, twin, vm=vm))
    times = measure(engines, len(xs), rounds, evict or False)
    ms = [float(np.median(times[e.name])) * 1e3 for e in engines]
    return {"step": ms[0], **{part: ms[i] - ms[i + 1] for i, part in enumerate(parts)}, "vm": ms[-1]}


class _InstrumentedSequence:
    """``xs`` decoded by ``dec`` through a second VM whose instrument adds each kernel call's time to its part
    (:func:`kernel_part`); ``twin`` (cold breakdowns) steps through the same VM."""

    def __init__(self, dec, xs: list[np.ndarray], twin=None) -> None:
        import tvm_ffi

        from .runtime import sequence_runner

        vm = dec.instrumentable_vm()  # a second VM, over the bytecode library: an instrument sees its calls
        self.current: dict[str, float] = {}
        started = [0.0]

        def instrument(func, symbol, before_run, ret, *args) -> int:
            now = time.perf_counter()
            if before_run:
                started[0] = now
            elif not str(symbol).startswith("vm.builtin"):
                part = kernel_part(str(symbol))
                self.current[part] = self.current.get(part, 0.0) + now - started[0]
            return 0  # VMInstrumentReturnKind: no-op

        vm.set_instrument(tvm_ffi.convert(instrument))
        self.steps = len(xs)
        self.prepare, self.step, _ = sequence_runner(dec, xs, vm=vm)
        self.twin = sequence_runner(twin, xs, vm=vm)[:2] if twin is not None else None

    def run(self, evict: Callable[[], None] | None = None) -> list[dict[str, float]]:
        """Seconds per part (and the whole ``step``) of each step after a warm-up step."""
        self.prepare()
        self.step(0)  # warm-up
        if self.twin is not None:
            self.twin[0]()
        per_step = []
        for i in range(1, self.steps):
            _go_cold(evict, self.twin[1] if self.twin is not None else None, i)
            self.current.clear()
            t0 = time.perf_counter()
            self.step(i)
            per_step.append({**self.current, "step": time.perf_counter() - t0})
        return per_step


def _part_medians(per_step: list[dict[str, float]]) -> dict[str, float]:
    return {part: float(np.median([d.get(part, 0.0) for d in per_step])) for part in (*PARTS, "step")}


def _in_ms(seconds: dict[str, float]) -> dict[str, float]:
    return {part: round(v * 1e3, 4) for part, v in seconds.items()}


def bench_model(model: str, cfg: BenchConfig) -> tuple[list[dict], dict]:
    """Rows for one model (every engine, cache mode and ratio) and facts about the run."""
    import torch

    from .build import BuildConfig, build_model, built_from
    from .inputs import decode_stream
    from .peers import OpenVINOStep, onnxruntime_session, torch_cell
    from .registry import model_config, read_checkpoint
    from .results import warn_if_busy
    from .runtime import CompiledDecoder, sequence_runner
    from .target import parse_target

    target = parse_target(cfg.target).with_default_cores()
    # (engine, W_LL bits, INT8 path: None = the target's, mask rule) -> build folder (each holds a dense build too:
    # the first one's is timed)
    variants = [(dual_engine(b), b, None, "activation") for b in cfg.little_bits]
    if cfg.int8_float:
        variants.append(("tvm-dual-int8float", 8, False, "activation"))
    if cfg.contribution:
        variants += [(dual_engine(b, mask_rule="contribution"), b, None, "contribution") for b in cfg.little_bits]
    builds = {engine: BuildConfig(model=model, target=cfg.target, checkpoint=cfg.checkpoint, little_bits=bits,
                                  eps=cfg.eps, k=cfg.k, decoder_layer=cfg.decoder_layer, data_dir=cfg.data_dir,
                                  int8_codes=codes, mask_rule=rule, projection=cfg.projection, max_rows=cfg.max_rows)
              for engine, bits, codes, rule in variants}
    label = builds[variants[0][0]].label  # the rows' model name, the same for every variant
    outs = {}
    for engine, build in builds.items():
        outs[engine] = str(build.default_out(target, cfg.build_root))
        if not (cfg.reuse_builds and built_from(Path(outs[engine]), build)):
            build_model(replace(build, out=outs[engine]))
    out = outs[variants[0][0]]
    dual, dense = CompiledDecoder(f"{out}/dual"), CompiledDecoder(f"{out}/dense")
    weights = dual.manifest["model"]["weights"]
    origin = weights_origin(weights)
    mc = model_config(model)
    xs, _ = decode_stream(read_checkpoint(cfg.checkpoint) if cfg.checkpoint else None, mc.input_size, cfg.steps,
                          cfg.data_dir, cfg.decoder_layer)  # a trained model's own held-out data: its real masks
    cold_run = "cold" in cfg.caches  # every engine gets a twin over its own weights (see measure)
    twins = {"tvm-dense": dense.twin()} if cold_run else {}
    engines = [decoder_engine("tvm-dense", 0.0, dense, xs, twins.get("tvm-dense"))]
    decs = {"tvm-dense": dense}
    measured, bits_of, codes_of = {}, {}, {}
    for (engine, bits, _, _), r in ((v, r) for v in variants for r in cfg.ratios):
        name = f"{engine}@{r}"
        dec = CompiledDecoder(f"{outs[engine]}/dual")
        codes_of[name] = dec.spec.layers[0].codes
        dec.set_insensitive_ratio(r)
        measured[name] = measured_insensitive_ratio(dec, sequence_runner(dec, xs), cfg.steps)  # this sequence's masks
        bits_of[name] = bits
        if cold_run:
            twins[name] = dec.twin()
        engines.append(decoder_engine(name, r, dec, xs, twins.get(name)))
        decs[name] = dec
    breakdown_rounds = min(cfg.rounds, 8)
    evictor = Evictor() if cold_run else None
    breakdowns = {"warm": step_breakdowns(decs, xs, breakdown_rounds)}  # in-step; before any peer's threads exist
    if cold_run:
        breakdowns["cold"] = step_breakdowns(decs, xs[:min(cfg.cold_steps, cfg.steps)], breakdown_rounds, evictor, twins)
    layers = big_layers_from_params(dense)
    torch.set_num_threads(cfg.threads)
    if "torch" in cfg.peers:
        engine = _torch_engine([torch_cell(l) for l in layers], xs, mc)
        engine.twin = _torch_engine([torch_cell(l) for l in layers], xs, mc) if cold_run else None
        engines.append(engine)
    for peer in ("onnxruntime", "openvino"):
        if peer not in cfg.peers:
            continue
        try:
            if peer == "onnxruntime":  # a twin session has its own thread pool: spinning after the twin's step,
                # it would take the timed session's cores
                make = lambda l: onnxruntime_session(l, cfg.threads)  # noqa: E731
                make_twin = lambda l: onnxruntime_session(l, cfg.threads, spin=False)  # noqa: E731
            else:
                make = make_twin = lambda l: OpenVINOStep(l, cfg.threads)  # noqa: E731
            engine = _step_graph_engine(peer, [make(l) for l in layers], xs, mc)
            engine.twin = _step_graph_engine(peer, [make_twin(l) for l in layers], xs, mc) if cold_run else None
            engines.append(engine)
        except ImportError:
            log.warning("%s is not installed: skipping that peer", peer)
    rows: list[dict] = []
    k = dual.spec.layers[0].k
    dense_parts = layers_part_bytes(dual.spec.layers, k, None)  # traffic.step_bytes per phase, summed over layers
    dense_bytes = sum(dense_parts.values())
    dense_ops = sum(step_ops(s.hidden, s.input_size, s.gates, k, None) for s in dual.spec.layers)
    busy: list[str] = []
    for cache in cfg.caches:
        busy += warn_if_busy(f"{label} {cache}")
        cold = cache == "cold"
        times = measure(engines, min(cfg.cold_steps, cfg.steps) if cold else cfg.steps, cfg.rounds,
                        cold=evictor if cold else False)
        stats = {name: summarize(t) for name, t in times.items()}
        rounds = per_round_medians(times, cfg.rounds)
        peers = [e.name for e in engines if not e.name.startswith("tvm")]
        best_peer = min(peers, key=lambda n: stats[n][0]) if peers else None  # by its median over the run

        def speedups(name: str) -> dict:
            """× TVM dense and × the best peer, paired round by round (:func:`paired_speedup`), with quartiles."""
            out = {}
            for key, ref in (("speedup_vs_tvm_dense", "tvm-dense"), ("speedup_vs_best_peer", best_peer)):
                if ref is None or ref == name:
                    continue
                mid, lo, hi = paired_speedup(rounds, name, ref)
                out[key], out[f"{key}_quartiles"] = round(mid, 3), [round(lo, 3), round(hi, 3)]
            return out
        for e in engines:
            med, iqr = stats[e.name]
            is_tvm = e.name.startswith("tvm")
            row = {"model": label, "engine": e.name.split("@")[0], "insensitive_ratio": e.ratio, "median_ms": round(med, 4),
                   "iqr_ms": round(iqr, 4), "cache": cache, "threads": cfg.threads,
                   "target": target.cli if is_tvm else None, "weights": weights, "weights_origin": origin}
            if cold:
                row["evict_mb"] = evictor.nbytes >> 20  # rows without it swept 64 MB
                row["runtime_warm"] = e.twin is not None  # a twin's step warmed code and runtime (rows without: no)
            if e.name in measured:
                row["part_bytes"] = layers_part_bytes(dual.spec.layers, k, 1 - measured[e.name], bits_of[e.name])
                dual_bytes = sum(row["part_bytes"].values())
                dual_ops = sum(step_ops(s.hidden, s.input_size, s.gates, k, 1 - measured[e.name]) for s in dual.spec.layers)
                row.update({"little_bits": bits_of[e.name], "little_on_codes": codes_of[e.name],
                            "eps": None if cfg.k else cfg.eps, "k": k,
                            "measured_ratio": round(measured[e.name], 4), **speedups(e.name),
                            "speedup_pairing": "per round", "byte_bound_speedup": round(dense_bytes / dual_bytes, 3),
                            "achieved_gbps": round(dual_bytes / med / 1e6, 2),
                            "bytes_per_step": dual_bytes, "ops_per_step": dual_ops})
                row["fraction_of_bound"] = round(row["speedup_vs_tvm_dense"] / row["byte_bound_speedup"], 3)
                _add_breakdown(row, breakdowns[cache][e.name], breakdown_rounds)
            elif e.name == "tvm-dense":
                row.update(achieved_gbps=round(dense_bytes / med / 1e6, 2), bytes_per_step=dense_bytes, ops_per_step=dense_ops,
                           part_bytes=dict(dense_parts))
                row.update(speedups(e.name), speedup_pairing="per round")
                _add_breakdown(row, breakdowns[cache][e.name], breakdown_rounds)
            rows.append(row)
    return rows, {"weights": weights, "dense_bytes": dense_bytes, "busy_processes": busy}


def dual_engine(little_bits: int, engine: str = "tvm-dual", mask_rule: str = "activation",
                projection: str = "sparse", k: int | None = None) -> str:
    """Engine name of a dual-module engine with W_LL at ``little_bits``, masks by ``mask_rule``, the ``projection``
    and ``k`` where set (INT8, eq. 5, eq. 2 and eq. 3's k, the paper's, keep the bare name)."""
    from .little import size_suffix

    return (engine + size_suffix(k=k) + ("" if little_bits == 8 else f"-int{little_bits}")
            + ("" if mask_rule == "activation" else f"-{mask_rule}") + ("" if projection == "sparse" else f"-{projection}"))


def _torch_engine(cells: list, xs: list[np.ndarray], mc) -> Engine:
    """PyTorch's cells (``peers.torch_cell``) stepping ``xs`` through the stack, residuals included."""
    import torch

    txs = [torch.from_numpy(x).view(1, -1) for x in xs]
    state: dict = {}

    def prep() -> None:
        state["s"] = [None] * len(cells)

    def step(i: int) -> None:
        with torch.no_grad():
            inp = txs[i]
            for j, c in enumerate(cells):
                st = c(inp, state["s"][j])
                state["s"][j] = st
                h = st[0] if isinstance(st, tuple) else st
                inp = h + inp if mc.residual()[j] else h

    return Engine("torch", 0.0, prep, step)


def _step_graph_engine(name: str, sessions: list, xs: list[np.ndarray], mc) -> Engine:
    """A peer running one ONNX-style step graph per layer (X, h0[, c0] → Y_h[, Y_c]), residuals in numpy."""
    state: dict = {}

    def prep() -> None:
        z = np.zeros((1, 1, mc.hidden), np.float32)
        state["s"] = [[z, z] for _ in sessions]

    def step(i: int) -> None:
        inp = xs[i].reshape(1, 1, -1)
        for j, sess in enumerate(sessions):
            feeds = {"X": inp, "h0": state["s"][j][0]}
            if mc.rnn_type == "LSTM":
                feeds["c0"] = state["s"][j][1]
            res = sess.run(None, feeds)
            state["s"][j] = [res[0], res[1] if len(res) > 1 else None]
            inp = res[0] + inp if mc.residual()[j] else res[0]

    return Engine(name, 0.0, prep, step)


def _add_breakdown(row: dict, breakdown: dict[str, float], rounds: int) -> None:
    """Kernel times per part (in-step), their sum, the instrumented step and the rest (the VM's own work), and the
    interleaved rounds they are medians over (:func:`step_breakdowns`; rows without: one pass)."""
    row["breakdown_ms"] = {part: breakdown[part] for part in PARTS}
    row["kernels_ms"] = round(sum(row["breakdown_ms"].values()), 4)
    row["breakdown_step_ms"] = breakdown["step"]
    row["overhead_ms"] = round(breakdown["step"] - row["kernels_ms"], 4)
    row["breakdown_rounds"] = rounds


def cache_label(row: dict) -> str:
    """``warm``; ``cold weights (N MB)`` where a twin warmed code and runtime after the N MB sweep (:func:`measure`);
    ``cold (N MB)`` where only the sweep ran (rows from before ``evict_mb`` swept 64 MB)."""
    if row["cache"] == "warm":
        return "warm"
    return f"{'cold weights' if row.get('runtime_warm') else 'cold'} ({row.get('evict_mb', EVICT_MIN_BYTES >> 20)} MB)"


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | cache | engine | ratio | median ms | IQR ms | × TVM dense | × best peer | bound × | GB/s | of read bw "
            "| run target |\n")
    head += "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    lines = []
    for r in rows:
        lines.append(f"| {r['model']} | {cache_label(r)} | {r['engine']} | {r['insensitive_ratio']:.1f} | {r['median_ms']:.3f} "
                     f"| {r['iqr_ms']:.3f} | {r.get('speedup_vs_tvm_dense', '')} | {r.get('speedup_vs_best_peer', '') or ''} "
                     f"| {r.get('byte_bound_speedup', '')} | {r.get('achieved_gbps', '')} | {r.get('fraction_of_read_bw', '')} "
                     f"| {r.get('run_target', '')} |")
    return head + "\n".join(lines) + "\n"


DUAL_MARKERS = (("tvm-dual", "o"), ("tvm-dual-int4", "s"), ("tvm-dual-contribution", "^"),
                ("tvm-dual-int4-contribution", "v"))
"""The dual-module engines the plots draw (W_LL bits × mask rule), with their markers."""


def plot(rows: list[dict], path: str) -> None:
    """ms per step vs insensitive ratio, one panel per model and target: the dual engines as curves, the dense
    step and the peers as horizontal lines (warm solid, cold dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_panel = _rows_by_panel(rows)
    fig, axes = _panel_grid(len(by_panel))
    for ax, (name, mine) in zip(axes, by_panel.items()):
        for cache, style in (("warm", "-"), ("cold", "--")):
            for engine, marker in (*DUAL_MARKERS, ("tvm-dual-int8float", "x")):
                dual = sorted((r["insensitive_ratio"], r["median_ms"]) for r in mine
                              if r["cache"] == cache and r["engine"] == engine)
                if dual:
                    ax.plot(*zip(*dual), marker + style, label=f"{engine} ({cache})")
            for r in mine:
                if r["cache"] == cache and not r["engine"].startswith("tvm-dual"):
                    ax.axhline(r["median_ms"], ls=style, lw=0.8, color={"tvm-dense": "k", "torch": "tab:red",
                                                                          "onnxruntime": "tab:green"}.get(r["engine"], "gray"),
                               label=f"{r['engine']} ({cache})")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("insensitive ratio")
        ax.set_ylabel("ms per step (batch 1)")
        ax.legend(fontsize=7)
    _finish(fig, rows, path)
    plt.close(fig)


def _finish(fig, rows: list[dict], path: str) -> None:
    """Lay ``fig`` out under the name of the machine its rows were timed on (where one), and save it."""
    from .results import short_machine

    machines = {r.get("machine") for r in rows}
    if len(machines) == 1 and None not in machines:
        fig.suptitle(f"timed on {short_machine(machines.pop())}", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))
    else:
        fig.tight_layout()
    save_figure(fig, path)


def save_figure(fig, path: str) -> None:
    """``fig`` as a PNG of 256 colours: the latency plots (a panel per model, target and machine) reached 2 MB as
    full-colour PNGs, about 0.7 MB so; line plots lose nothing visible."""
    import io

    from PIL import Image

    full = io.BytesIO()  # rendered in memory: the file is written once, as 256 colours
    fig.savefig(full, format="png", dpi=110)
    full.seek(0)
    with Image.open(full) as im:
        palette = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    palette.save(path, optimize=True)


def _panel_grid(n: int):
    """A figure of ``n`` panels, three to a line (the grid's unused axes hidden): (figure, its ``n`` axes)."""
    import matplotlib.pyplot as plt

    cols = min(3, n)
    lines = (n + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(6 * cols, 4 * lines), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _rows_by_panel(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows grouped by :func:`_panel`, panels in sorted order (the machine joins the label only where the rows
    come from several)."""
    several = len({r.get("machine") for r in rows}) > 1
    by_panel: dict[str, list[dict]] = {}
    for r in rows:
        by_panel.setdefault(_panel(r, several), []).append(r)
    return dict(sorted(by_panel.items()))


def _panel(r: dict, several_machines: bool) -> str:
    """One plot panel per model, TVM target of the run and weights (and machine, where the rows come from several)."""
    from .results import short_machine

    run = r.get("run_target", "llvm -mcpu=broadwell").removeprefix("llvm -mcpu=")
    return (f"{r['model']} ({run}, {weights_origin(r.get('weights', ''))}"
            + (f", {short_machine(r.get('machine') or '?')})" if several_machines else ")"))


def checkpoint_stem(weights: str) -> str | None:
    """The checkpoint a row's ``weights`` names (``checkpoint cache/ptb-lstm-1500-r2.best.pt, …`` →
    ``ptb-lstm-1500-r2``, the model name its quality rows carry), or None for random weights."""
    m = re.search(r"checkpoint (?:\S*/)?([^/\s,]+?)(?:\.best)?\.pt", weights or "")
    return m.group(1) if m else None


def weights_origin(weights: str) -> str:
    """Whose weights a row timed: its checkpoint's stem, or ``random``.  Part of :data:`LATENCY_KEY` and of the
    panel names, so a model's rows on random weights and on a trained checkpoint stand side by side (masks differ)."""
    return checkpoint_stem(weights) or "random"


LATENCY_KEY = ("model", "run_target", "machine", "weights_origin")
"""What a rerun of ``scripts/bench.py`` replaces in ``results/latency.json``: the rows of the same model (label),
TVM target, machine and weights; other machines' and other weights' rows stay beside them."""

LATENCY_RUN_FIELDS = ("command", "git", "machine", "run_target", "weights", "weights_origin", "stream_gbps",
                      "gemv_gbps", "read_gbps")
"""What one ``scripts/bench.py`` run gives every row of a model: stored once per run in ``results/latency.json``
(:func:`dualtvm.results.write_results`)."""


QUALITY_CURVES = {"INT8": (8, "activation"), "INT4": (4, "activation"), "INT8, contribution": (8, "contribution"),
                  "INT4, contribution": (4, "contribution")}
"""The quality curves drawn beside a panel's speed-ups: W_LL bits and mask rule of ``eval_lm``'s rows."""


def quality_variants(label: str) -> dict[str, str]:
    """The ``eval_lm`` variants (one ratio for all gates) whose little module is the one a latency panel timed,
    by curve name: its row label's size and projection (``lstm-1500-k128-learned`` → ``k128-int8 learned``;
    ``lstm-1500`` → ``eps0.5-int8``, the paper's), each W_LL precision and mask rule of :data:`QUALITY_CURVES`,
    spelled by :func:`dualtvm.little.quality_variant` as ``eval_lm`` spells them."""
    from .little import LittleConfig, quality_variant, uniform_head

    m = re.search(r"(?:-k(\d+)|-eps([\d.]+))?(-learned)?$", label)
    size = {"k": int(m.group(1)) if m.group(1) else None, "eps": float(m.group(2)) if m.group(2) else 0.5,
            "projection": "learned" if m.group(3) else "sparse"}
    return {name: quality_variant("uniform", uniform_head(cfg), cfg)
            for name, (bits, rule) in QUALITY_CURVES.items()
            for cfg in [LittleConfig(bits=bits, mask_rule=rule, **size)]}


def plot_speedups(rows: list[dict], path: str, quality_rows: list[dict] | None = None) -> bool:
    """Speed-up over the dense TVM step vs insensitive ratio, one panel per model and target: the dual engines'
    paired speed-ups with their quartiles over rounds as error bars (rows from before pairing: a point), the byte
    bound (dense bytes ÷ dual bytes) they are measured against, and, where the row's checkpoint has PTB quality rows
    (``lm-quality-ptb.json``, ``lm-allocation-ptb.json``: one ratio for all gates, the little module the panel timed:
    :func:`quality_variants`), the test ΔPPL % on a second axis.  False, and nothing written, without speed-ups."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_panel = _rows_by_panel([r for r in rows if r.get("speedup_vs_tvm_dense") is not None
                               and r["insensitive_ratio"] < 1.0])  # ratio 1 (no big row; ~15×) would flatten the rest
    if not by_panel:
        return False
    fig, axes = _panel_grid(len(by_panel))
    for ax, (name, mine) in zip(axes, by_panel.items()):
        for cache, style in (("warm", "-"), ("cold", "--")):
            for engine, marker in DUAL_MARKERS:
                pts = sorted((r["insensitive_ratio"], r["speedup_vs_tvm_dense"],
                              r.get("speedup_vs_tvm_dense_quartiles") or [r["speedup_vs_tvm_dense"]] * 2)
                             for r in mine if r["cache"] == cache and r["engine"] == engine)
                if pts:
                    x, y, q = zip(*pts)
                    err = [[v - lo for v, (lo, _) in zip(y, q)], [hi - v for v, (_, hi) in zip(y, q)]]
                    ax.errorbar(x, y, yerr=err, fmt=marker + style, capsize=2, ms=4, label=f"{engine} ({cache})")
        bound = sorted({(r["insensitive_ratio"], r["byte_bound_speedup"]) for r in mine
                        if r["engine"] == "tvm-dual" and r["cache"] == "cold"})
        if bound:
            ax.plot(*zip(*bound), ":", color="gray", label="byte bound (INT8)")
        ax.axhline(1.0, color="k", lw=0.6)
        ax.plot([0.5], [LSTM_1500_SPEEDUP_AT_HALF], "*", color="tab:red", ms=10,
                label=f"paper: {LSTM_1500_SPEEDUP_AT_HALF}× at 50 %")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("insensitive ratio")
        ax.set_ylabel("× dense TVM step (paired; quartiles)")
        stem = checkpoint_stem(mine[0].get("weights", ""))
        curves = {label: sorted({(q["insensitive_ratio"], q["delta_ppl_pct"]) for q in quality_rows or []
                                 if q["model"] == stem and q["part"] == "uniform"
                                 and q.get("variant") in ("base", variant)})
                  for label, variant in quality_variants(mine[0]["model"]).items()}
        if stem and any(len(c) > 1 for c in curves.values()):
            twin = ax.twinx()
            for (label, points), color in zip(curves.items(), ("tab:purple", "tab:brown", "tab:olive", "tab:cyan")):
                if len(points) > 1:
                    twin.plot(*zip(*points), "x:", color=color, label=f"test ΔPPL % ({label}, {stem})")
            twin.set_ylabel("test ΔPPL % (one ratio for all gates)")
            twin.legend(fontsize=6, loc="center left")
        ax.legend(fontsize=6, loc="upper left")
    _finish(fig, rows, path)
    plt.close(fig)
    return True


def machine_slug(machine: str) -> str:
    """'AMD EPYC (znver3), 2 cores' → 'amd-epyc-znver3-2-cores': a machine's name in a file name."""
    from .results import short_machine

    return re.sub(r"[^a-z0-9]+", "-", short_machine(machine).lower()).strip("-")


def write_plots(rows: list[dict], out: "str | Path") -> list[Path]:
    """The latency plots, one set per machine (a figure of every machine's panels was 44 panels, unreadable):
    ``<out>.png`` (ms per step, every engine), ``<out>-speedup.png`` (:func:`plot_speedups`, with the PPL rows of
    ``lm-quality-ptb.json`` and ``lm-allocation-ptb.json`` beside ``out`` where they exist) and
    ``<out>-fixed-cost.png`` (:func:`fixed_cost.plot_latest_machine`) for the machine of the latest run (the last
    row's), ``<out>-<machine>.png`` and ``<out>-<machine>-speedup.png`` for each other: what ``scripts/bench.py``
    and ``render_results`` draw.  Returns the files written."""
    from .results import latest_machine, read_rows

    out = Path(out).with_suffix("")
    quality = [q for name in ("lm-quality-ptb.json", "lm-allocation-ptb.json") for q in read_rows(out.parent / name)]
    latest = latest_machine(rows)
    written = []
    for machine in dict.fromkeys(r.get("machine") for r in rows):
        mine = [r for r in rows if r.get("machine") == machine]
        stem = out.name if machine == latest else f"{out.name}-{machine_slug(machine or 'unnamed')}"
        plot(mine, str(out.parent / f"{stem}.png"))
        written.append(out.parent / f"{stem}.png")
        if plot_speedups(mine, str(out.parent / f"{stem}-speedup.png"), quality):
            written.append(out.parent / f"{stem}-speedup.png")
    if plot_latest_machine(rows, str(out.parent / f"{out.name}-fixed-cost.png")):
        written.append(out.parent / f"{out.name}-fixed-cost.png")
    return written
