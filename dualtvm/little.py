"""The big layer's weights and the little module fitted to it (paper §3.2, eqs. 4 and 7).

The little module of a layer is ``y_LL = W_LL [Q(P_x x); Q(P_h h)] + b_LL``: sparse random
projections of the input and the previous hidden state to k dims each (§3.5), a linear map
fitted to the big layer's pre-activations over all samples and time steps (eq. 7), then
quantised (INT8 per-row by default).  Eq. 7's minimiser is a least-squares solution, so the
default fit accumulates the normal equations while streaming the training data (exact, one
pass, bounded memory); ``method="sgd"`` runs the paper's mini-batch SGD on the same loss.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .gates import GateLayout, layout
from .projection import CovarianceAccumulator, Projection, check_kind, little_dim, pair_row_scales
from .quantize import QuantizedTensor, equalising_scale, fake_quantize_activations, quantize
from .thresholds import check_mask_rule

log = logging.getLogger(__name__)


@dataclass
class BigLayer:
    """One recurrent layer's fp32 weights in PyTorch's layout (gate rows stacked)."""

    rnn_type: str
    w_ih: torch.Tensor  # (n, d_x)
    w_hh: torch.Tensor  # (n, d_h)
    b_ih: torch.Tensor  # (n,)
    b_hh: torch.Tensor  # (n,)

    @property
    def hidden(self) -> int:
        return self.w_hh.shape[1]

    @property
    def input_size(self) -> int:
        return self.w_ih.shape[1]

    @property
    def layout(self) -> GateLayout:
        return layout(self.rnn_type)

    def weight_hash(self) -> str:
        """sha256 of the weights: ties a little-module artefact to exactly these big weights."""
        h = hashlib.sha256(self.rnn_type.encode())
        for t in (self.w_ih, self.w_hh, self.b_ih, self.b_hh):
            h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()

    def weight_bytes(self) -> int:
        return 4 * (self.w_ih.numel() + self.w_hh.numel())

    def targets(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """What the little module regresses onto (eq. 7): gate pre-activations, GRU n split in two."""
        gi = x @ self.w_ih.t() + self.b_ih
        gh = h @ self.w_hh.t() + self.b_hh
        if self.rnn_type == "LSTM":
            return gi + gh
        H = self.hidden
        return torch.cat([gi[..., : 2 * H] + gh[..., : 2 * H], gi[..., 2 * H :], gh[..., 2 * H :]], dim=-1)


def big_layers(rnn: nn.Module) -> list[BigLayer]:
    """Split a user's ``nn.LSTM``/``nn.GRU`` (any number of layers, seq- or batch-first) into :class:`BigLayer` s."""
    if not isinstance(rnn, (nn.LSTM, nn.GRU)):
        raise TypeError(f"expected nn.LSTM or nn.GRU, got {type(rnn).__name__}")
    if rnn.bidirectional:  # a decode step runs forwards only: the backward direction needs the whole sequence
        raise ValueError("bidirectional RNNs are not supported: a dual-module layer decodes step by step, forwards")
    if getattr(rnn, "proj_size", 0):
        raise ValueError(f"LSTMs with proj_size={rnn.proj_size} are not supported: the little module predicts the "
                         "gates of an LSTM whose recurrent input is its hidden state")
    rnn_type = "LSTM" if isinstance(rnn, nn.LSTM) else "GRU"
    layers = []
    for l in range(rnn.num_layers):
        def get(name: str, rows: int) -> torch.Tensor:
            t = getattr(rnn, f"{name}_l{l}", None)
            return t.detach().clone().float() if t is not None else torch.zeros(rows)
        w_ih = get("weight_ih", 0)
        layers.append(BigLayer(rnn_type, w_ih, get("weight_hh", 0), get("bias_ih", w_ih.shape[0]), get("bias_hh", w_ih.shape[0])))
    return layers


@dataclass
class LittleConfig:
    eps: float = 0.5  # eq. 3
    k: int | None = None  # overrides eps
    bits: int = 8  # weight precision (Table 6)
    act_bits: int = 8  # run-time precision of the projected inputs
    per_row: bool = True
    seed: int = 0
    method: str = "lstsq"  # or "sgd" (paper)
    ridge: float = 1e-6  # relative ridge for the normal equations
    sgd_epochs: int = 3
    sgd_lr: float = 1e-3
    sgd_batch: int = 1024
    sigmoid_tails: str = "low"  # which saturated ends of a sigmoid gate may be insensitive (thresholds.SIGMOID_TAILS)
    mask_rule: str = "activation"  # what the mask tests: a_LL (eq. 5) or the contribution score (thresholds.MASK_RULES)
    projection: str = "sparse"  # eq. 2's random projection, or "learned" (beyond the paper: Projection.learned)

    def __post_init__(self) -> None:
        check_mask_rule(self.mask_rule, self.sigmoid_tails)
        check_kind(self.projection)
        if self.k is not None and self.k < 1:
            raise ValueError(f"k must be a positive number of projected dims, got {self.k}")

    @property
    def variant(self) -> str:
        """What this variant's little-module artefacts and builds are suffixed with (:func:`size_suffix`, then
        :func:`variant_suffix`)."""
        return size_suffix(self.eps, self.k) + variant_suffix(self.bits, self.mask_rule, projection=self.projection)


def size_suffix(eps: float = 0.5, k: int | None = None) -> str:
    """The one spelling of how k was set, in row labels and build folders: ``-k<k>`` where k is set directly,
    ``-eps<ε>`` for eq. 3 at another ε than the paper's 0.5, nothing for the paper's k."""
    return f"-k{k}" if k else ("" if eps == 0.5 else f"-eps{eps:g}")


def variant_suffix(bits: int = 8, mask_rule: str = "activation", int8_codes: bool | None = None,
                   projection: str = "sparse") -> str:
    """The one spelling of a little-module variant in file and folder names: ``-w<bits>`` for W_LL other than INT8,
    ``-int8float`` for the INT8 little GEMV forced onto floats, ``-<rule>`` for masks other than eq. 5,
    ``-learned`` for a learned projection. The paper's variant (INT8, the target's INT8 path, eq. 5, eq. 2's
    projection) keeps the bare name, so two variants never share a folder."""
    return ("" if bits == 8 else f"-w{bits}") + ("-int8float" if int8_codes is False else "") + \
        ("" if mask_rule == "activation" else f"-{mask_rule}") + ("" if projection == "sparse" else f"-{projection}")


QUALITY_PARTS_NAMING_K = ("uniform", "eps", "k")  # parts whose row names carry k (or ε) in their head
QUALITY_PARTS_NAMING_BITS = ("per-gate", "largest-within-1pct", "eps", "k")  # the others' heads name W_LL bits


def uniform_head(cfg: LittleConfig) -> str:
    """How a one-ratio quality row names its little module's size and W_LL bits: ``k<k>-int<bits>`` where k is set
    directly, ``eps<ε>-int<bits>`` for eq. 3's k."""
    return f"{size_suffix(cfg.eps, cfg.k)[1:] or 'eps0.5'}-int{cfg.bits}"


def quality_variant(part: str, head: str, cfg: LittleConfig) -> str:
    """The one spelling of a quality row's ``variant`` (``eval_lm`` writes it, the latency plot looks its rows up):
    ``head`` names what the part varies (:func:`uniform_head` for one ratio, ``int4`` for precision, an allocation
    method, …), then what else ``cfg`` departs from the paper in: sigmoid tails, mask rule, projection, a set k
    (where the head does not name it) and W_LL bits (where the head does not name them). The base row is ``base``."""
    if head == "base":
        return head
    return head + ("" if cfg.sigmoid_tails == "low" else f" sigmoid-{cfg.sigmoid_tails}") + \
        ("" if cfg.mask_rule == "activation" else f" {cfg.mask_rule}") + \
        ("" if cfg.projection == "sparse" else f" {cfg.projection}") + \
        ("" if cfg.k is None or part in QUALITY_PARTS_NAMING_K else f" k{cfg.k}") + \
        ("" if cfg.bits == 8 or part not in QUALITY_PARTS_NAMING_BITS else f" int{cfg.bits}")


@dataclass
class LittleModule:
    """Projection, quantised W_LL/b_LL and calibration of one layer."""

    rnn_type: str
    hidden: int
    input_size: int
    proj_x: Projection
    proj_h: Projection
    weight: QuantizedTensor  # (n_little, 2k)
    bias: torch.Tensor  # (n_little,) fp32
    act_bits: int
    big_hash: str
    fit_mse: dict = field(default_factory=dict)  # per gate, on validation data
    calibration: dict = field(default_factory=dict)  # gate -> GateCalibration
    fit_seconds: float = 0.0

    @property
    def k(self) -> int:
        return self.proj_x.shape[0]

    @property
    def mask_rule(self) -> str:
        """What the calibrated masks test (``thresholds.MASK_RULES``); one rule for all gates of a layer."""
        rules = {c.rule for c in self.calibration.values()} or {"activation"}
        if len(rules) > 1:
            raise ValueError(f"gates of one layer calibrated with different mask rules: {sorted(rules)}")
        return rules.pop()

    @property
    def layout(self) -> GateLayout:
        return layout(self.rnn_type)

    def content_hash(self) -> str:
        """sha256 of the weights a compiled build holds of this module (projections and their row scales, W_LL codes
        and scales, b_LL)."""
        return arrays_hash(self.proj_x.codes, self.proj_h.codes, self.proj_x.row_scales(), self.proj_h.row_scales(),
                           self.weight.codes.numpy(), self.weight.scale.numpy(), self.bias.numpy())

    def project(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Steps 1 of Algorithm 1: [Q(P_x x); Q(P_h h)] (fake-quantised, per vector)."""
        return project_pair(self.proj_x, self.proj_h, x, h, self.act_bits)

    def preactivations(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """Step 2 before φ: W_LL z + b_LL."""
        return self.project(x, h) @ self.weight.dequantized_t() + self.bias

    def requantize(self, bits: int, per_row: bool = True, fp32_weight: torch.Tensor | None = None) -> "LittleModule":
        """The same fit at another precision (Table 6); needs the fp32 weight kept by the fit."""
        if fp32_weight is None:  # undo this precision's equalisation, if any
            fp32_weight = self.weight.dequantize() * torch.from_numpy(pair_row_scales(self.proj_x, self.proj_h))
        px, ph, w = equalised(self.proj_x.with_row_scale(None), self.proj_h.with_row_scale(None), fp32_weight, bits)
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return LittleModule(**{**fields, "proj_x": px, "proj_h": ph, "weight": quantize(w, bits, per_row)})

    def param_bytes(self) -> int:
        """Little-module storage: W_LL codes + scales + fp32 bias, and a learned projection's int8 codes
        (eq. 2's P is a seed, or 2 bits an entry), as Table 6 counts it (an equalised projection's 2k fp32 row scales,
        a few KB, not counted)."""
        learned = sum(p.codes.size for p in (self.proj_x, self.proj_h) if p.kind == "learned")
        return self.weight.nbytes() + 4 * self.bias.numel() + learned


def single_layers(rnn: nn.Module) -> nn.ModuleList:
    """A multi-layer ``nn.LSTM``/``nn.GRU`` as single-layer modules (same weights, run in sequence)."""
    mods = nn.ModuleList()
    for layer in big_layers(rnn):
        mods.append(big_module(layer))
    return mods


def big_module(layer: BigLayer) -> nn.Module:
    """A single-layer ``nn.LSTM``/``nn.GRU`` carrying ``layer``'s weights."""
    rnn = getattr(nn, layer.rnn_type)(layer.input_size, layer.hidden)
    with torch.no_grad():
        for name in ("w_ih", "w_hh", "b_ih", "b_hh"):
            getattr(rnn, name.replace("w_", "weight_").replace("b_", "bias_") + "_l0").copy_(getattr(layer, name))
    return rnn.eval()


class SampleRecorder:
    """Forward hooks that record (x(t), h(t−1)) — with ``cells``, (x(t), h(t−1), c(t−1)) for an LSTM — every time a
    single-layer RNN module runs.

    Works on any model built from single-layer ``nn.LSTM``/``nn.GRU`` modules (the LM's core,
    the seq2seq decoder stack), whatever wiring (residuals, attention) sits between them.
    """

    def __init__(self, modules: list[nn.Module], max_rows: int | None = None, cells: bool = False) -> None:
        self.samples: list[list[tuple[torch.Tensor, ...]]] = [[] for _ in modules]
        self.rows = [0] * len(modules)
        self.max_rows = max_rows
        self.cells = cells  # also c(t−1) of LSTM modules (the contribution scores need it): (x, h, c) samples
        self._handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def hook(module, args, output):
            if self.max_rows is not None and self.rows[i] >= self.max_rows:
                return
            x = args[0]
            state = args[1] if len(args) > 1 else None
            out = output[0]
            h0 = (state[0] if isinstance(state, tuple) else state) if state is not None else out[:1] * 0
            prev = torch.cat([h0, out[:-1]], dim=0)
            sample = (x.detach().reshape(-1, x.shape[-1]), prev.detach().reshape(-1, out.shape[-1]))
            if self.cells and isinstance(module, nn.LSTM):
                c0 = state[1][0] if state is not None else out.new_zeros(out.shape[1:])
                sample += (previous_cells(module, x.detach(), prev.detach(), c0.detach()).reshape(-1, out.shape[-1]),)
            self.samples[i].append(sample)
            self.rows[i] += x.shape[0] * x.shape[1]
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def __enter__(self) -> "SampleRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def previous_cells(lstm: nn.LSTM, x: torch.Tensor, h_prev: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c(t−1) at every step of a single-layer ``nn.LSTM`` run over x (T, B, d) from h(t−1) (T, B, H) and c0 (B, H):
    the cell state its forward pass keeps to itself, recomputed (eq. 6)."""
    with torch.no_grad():
        gates = x @ lstm.weight_ih_l0.t() + h_prev @ lstm.weight_hh_l0.t()
        if lstm.bias:
            gates = gates + lstm.bias_ih_l0 + lstm.bias_hh_l0
        i, f, g, _ = gates.chunk(4, dim=-1)
        i, f, g = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g)
        cells, c = [], c0
        for t in range(x.shape[0]):
            cells.append(c)
            c = f[t] * c + i[t] * g[t]
        return torch.stack(cells)


def arrays_hash(*arrays) -> str:
    """sha256 of the arrays' bytes, in order: what ties a compiled build to the little module it holds."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def project_pair(p_a: Projection, p_b: Projection, a: torch.Tensor, b: torch.Tensor, act_bits: int
                 ) -> torch.Tensor:
    """[Q(P_a a); Q(P_b b)]: two projections, each quantised at run time with its own scale (step 1)."""
    return torch.cat([fake_quantize_activations(p_a.apply(a), act_bits),
                      fake_quantize_activations(p_b.apply(b), act_bits)], dim=-1)


def equalised(p_a: Projection, p_b: Projection, w: torch.Tensor, bits: int
              ) -> tuple[Projection, Projection, torch.Tensor]:
    """(P_a, P_b, W) with W_LL's columns equalised for a ``bits`` grid (:func:`~dualtvm.quantize.equalising_scale`):
    the column scale t becomes the projections' row scales and W / t is what gets quantised; the product is
    unchanged.  As given at grids that need none."""
    t = equalising_scale(w, bits)
    if t is None:
        return p_a, p_b, w
    k = p_a.shape[0]
    return p_a.with_row_scale(t[:k].numpy()), p_b.with_row_scale(t[k:].numpy()), w / t


def design_matrix(little_x: Projection, little_h: Projection, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """[P_x x, P_h h, 1] per row: the inputs of eq. 7's regression (projections before run-time quantisation)."""
    z = torch.cat([little_x.apply(x), little_h.apply(h)], dim=-1)
    return torch.cat([z, torch.ones(z.shape[0], 1, dtype=z.dtype)], dim=-1)


def least_squares(pairs: Iterable[tuple[torch.Tensor, torch.Tensor]], dim: int, outputs: int, ridge: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """W (outputs, dim − 1) and b (outputs,) minimising Σ ‖Z [W b]ᵀ − Y‖² (eq. 7) over batches of (Z, Y), Z's last
    column ones: the normal equations, accumulated in float64 while streaming (exact, one pass, bounded memory),
    with a ridge of ``ridge`` × the mean diagonal."""
    A = torch.zeros(dim, dim, dtype=torch.float64)
    B = torch.zeros(dim, outputs, dtype=torch.float64)
    with torch.no_grad():
        for Z, Y in pairs:
            A += (Z.t() @ Z).double()
            B += (Z.t() @ Y).double()
    lam = ridge * torch.diagonal(A).mean()
    sol = torch.linalg.solve(A + lam * torch.eye(dim, dtype=torch.float64), B).float()  # (dim, outputs)
    return sol[:-1].t().contiguous(), sol[-1].contiguous()


def learned_pair(w_a: torch.Tensor, w_b: torch.Tensor, inputs: Iterable[tuple[torch.Tensor, torch.Tensor]], k: int
                 ) -> tuple[Projection, Projection]:
    """P_a and P_b of the two input halves (a, b) of a GEMV [W_a W_b] [a; b], each learned from its half's
    covariance over ``inputs`` and its weights (:meth:`Projection.learned`): the halves stay apart, as eq. 2's
    do (§3.5), so the run-time quantisation keeps one range per half."""
    ca, cb = CovarianceAccumulator(w_a.shape[1]), CovarianceAccumulator(w_b.shape[1])
    for a, b in inputs:
        ca.add(a)
        cb.add(b)
    return Projection.learned(w_a, ca.covariance(), k), Projection.learned(w_b, cb.covariance(), k)


def learned_projections(layer: BigLayer, samples: list[tuple[torch.Tensor, torch.Tensor]], k: int
                        ) -> tuple[Projection, Projection]:
    """P_x and P_h learned from the training samples' x and h and the big weights W_ih, W_hh (:func:`learned_pair`)."""
    return learned_pair(layer.w_ih, layer.w_hh, ((x, h) for x, h, *_ in samples), k)


def fit_little(layer: BigLayer, samples: list[tuple[torch.Tensor, torch.Tensor]], cfg: LittleConfig,
               valid_samples: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
               progress: bool = True) -> tuple[LittleModule, torch.Tensor]:
    """Fit W_LL, b_LL to the frozen big layer (eq. 7); returns the module and its fp32 weight.

    The fp32 weight is returned so Table 6 can requantise one fit at every precision.
    """
    t0 = time.time()
    lay = layer.layout
    n_little = lay.little_outputs(layer.hidden)
    k = little_dim(layer.w_ih.shape[0], cfg.eps, cfg.k)
    if cfg.projection == "learned":
        px, ph = learned_projections(layer, samples, k)
    else:
        px, ph = Projection.draw(k, layer.input_size, cfg.seed), Projection.draw(k, layer.hidden, cfg.seed + 1)
    dim = 2 * k + 1
    if cfg.method == "lstsq":
        def pairs():
            for x, h, *_ in tqdm(samples, desc=f"fit {layer.rnn_type}-{layer.hidden} (k={k})", disable=not progress,
                             leave=False):
                yield design_matrix(px, ph, x, h), layer.targets(x, h)

        w, b = least_squares(pairs(), dim, n_little, cfg.ridge)
    elif cfg.method == "sgd":
        w = torch.zeros(n_little, 2 * k, requires_grad=True)
        b = torch.zeros(n_little, requires_grad=True)
        opt = torch.optim.SGD([w, b], lr=cfg.sgd_lr, momentum=0.9)
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(cfg.sgd_epochs):
            for x, h, *_ in tqdm(samples, desc=f"sgd epoch {epoch + 1}", disable=not progress, leave=False):
                with torch.no_grad():
                    Z = design_matrix(px, ph, x, h)[:, :-1]
                    Y = layer.targets(x, h)
                for idx in torch.randperm(Z.shape[0], generator=gen).split(cfg.sgd_batch):
                    loss = ((Z[idx] @ w.t() + b - Y[idx]) ** 2).sum(1).mean()  # eq. 7
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        w, b = w.detach(), b.detach()
    else:
        raise ValueError(f"method must be 'lstsq' or 'sgd', got {cfg.method!r}")
    px, ph, w_eq = equalised(px, ph, w, cfg.bits)
    little = LittleModule(layer.rnn_type, layer.hidden, layer.input_size, px, ph, quantize(w_eq, cfg.bits, cfg.per_row),
                          b, cfg.act_bits, layer.weight_hash())
    little.fit_seconds = time.time() - t0
    if valid_samples:
        little.fit_mse = little_mse(little, layer, valid_samples)
    log.info("little module %s-%d: k=%d (%s projection), %.1fs, MSE %s", layer.rnn_type, layer.hidden, k, px.kind,
             little.fit_seconds,
             {g: round(v, 4) for g, v in little.fit_mse.items()})
    return little, w


def little_mse(little: LittleModule, layer: BigLayer, samples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Mean squared pre-activation error per gate (the quantity eq. 7 minimises)."""
    H = layer.hidden
    names = list(layer.layout.gates) + (["n_h"] if layer.rnn_type == "GRU" else [])
    if layer.rnn_type == "GRU":
        names[2] = "n_x"
    sums = torch.zeros(len(names), dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for x, h, *_ in samples:
            err = (little.preactivations(x, h) - layer.targets(x, h)) ** 2
            sums += err.reshape(err.shape[0], len(names), H).mean(-1).sum(0).double()
            count += err.shape[0]
    return {n: float(v / max(count, 1)) for n, v in zip(names, sums)}
