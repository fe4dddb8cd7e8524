"""Argument types the scripts share: counts and sizes are refused at parse time, not deep in a run."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable


def command_line(script: str, argv: "list[str] | None") -> str:
    """The command a results row names: ``python scripts/<script's file name> <its arguments>`` (``argv`` as the
    script's ``main`` got it, None for the process's own), shell-quoted so that it can be pasted back."""
    return shlex.join(["python", f"scripts/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The scripts' formatter: their descriptions as laid out, and each option's default after its help
    (unless it has none, or the help already says it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def positive_int(text: str) -> int:
    """An ``argparse`` type for counts (threads, steps, rounds, epochs, beam): an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """An ``argparse`` type for sizes and budgets (e.g. milliseconds): a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def ratio_list(text: str) -> tuple[float, ...]:
    """An ``argparse`` type for ``--ratios``: comma-separated insensitive ratios, each in [0, 1]."""
    try:
        return tuple(unit_ratio(r) for r in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios in [0, 1], got {text!r}") from None


def positive_int_list(text: str) -> tuple[int, ...]:
    """An ``argparse`` type for comma-separated positive integers (e.g. ``--k-values``)."""
    try:
        return tuple(positive_int(t) for t in text.split(","))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None


def choice_list(choices: "tuple | list", convert: Callable[[str], object] = str, what: str = "entries"):
    """An ``argparse`` type for comma-separated entries, each one of ``choices`` (after ``convert``), as a tuple."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(convert(t) for t in text.split(","))
        except ValueError:
            values = ()
        if not values or set(values) - set(choices):
            raise argparse.ArgumentTypeError(f"expected comma-separated {what} from {', '.join(map(str, choices))}, "
                                             f"got {text!r}")
        return values

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def model_name(text: str) -> str:
    """An ``argparse`` type for ``--model``: a shape of :data:`dualtvm.registry.MODELS`."""
    from .registry import MODELS

    if text not in MODELS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}: known models are {', '.join(sorted(MODELS))}")
    return text


def model_names(text: str) -> tuple[str, ...]:
    """An ``argparse`` type for ``--models``: comma-separated :func:`model_name` entries."""
    return tuple(model_name(m) for m in text.split(","))


def unit_ratio(text: str) -> float:
    """An ``argparse`` type for one insensitive ratio in [0, 1]."""
    from .thresholds import check_ratio

    try:
        return check_ratio(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio in [0, 1], got {text!r}") from None


def add_target_option(p: argparse.ArgumentParser) -> None:
    """``--target``, as every script that compiles or times for one takes it (parsed by ``target.parse_target``)."""
    p.add_argument("--target", default="llvm -mcpu=broadwell", help="CLI string, JSON dict or JSON file")


def add_data_dir_option(p: argparse.ArgumentParser) -> None:
    """``--data-dir``, as every script that reads a corpus takes it (resolved by ``data.default_data_dir``)."""
    p.add_argument("--data-dir", default=None, help="data root (default $DUALTVM_DATA or ../shared/data)")


def add_step_inputs_options(p: argparse.ArgumentParser) -> None:
    """``--inputs`` and ``--data-dir``: the step inputs a script times a build on (``inputs.step_inputs``)."""
    p.add_argument("--inputs", type=step_inputs_source, default="data",
                   help="step inputs: 'data' (the held-out data of the checkpoint the build was made from: the masks "
                        "it makes in use; Gaussian where the build has no checkpoint), 'gaussian', or a .npy file of "
                        "your own (steps × input size)")
    add_data_dir_option(p)


def step_inputs_or_exit(p: argparse.ArgumentParser, a: argparse.Namespace, model: dict, input_size: int,
                        n: int) -> tuple[list, str]:
    """``inputs.step_inputs`` for ``add_step_inputs_options``'s ``a.inputs``; what cannot be read exits with
    ``p.error`` (for 'data': naming 'gaussian', which needs neither the checkpoint nor its data)."""
    from .data import DataError
    from .inputs import step_inputs

    try:
        return step_inputs(a.inputs, model, input_size, n, a.data_dir)
    except (OSError, ValueError, DataError) as e:
        hint = " (--inputs gaussian needs neither the checkpoint nor its data)" if a.inputs == "data" else ""
        p.error(f"{e}{hint}")


def step_inputs_source(text: str) -> str:
    """'data', 'gaussian' or an existing .npy file."""
    if text in ("data", "gaussian"):
        return text
    if not text.endswith(".npy"):
        raise argparse.ArgumentTypeError(f"want 'data', 'gaussian' or a .npy file, got {text!r}")
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def add_projection_option(p: argparse.ArgumentParser) -> None:
    """``--projection``, one spelling for every script that fits or builds a little module."""
    from .projection import KINDS

    p.add_argument("--projection", choices=KINDS, default="sparse",
                   help="the little module's projection: sparse (eq. 2, random) or learned (beyond the paper: the k "
                        "input directions that carry most of the big pre-activations' variance; same kernels and bytes)")


def add_output_little_options(p: argparse.ArgumentParser) -> None:
    """``--output-k`` and ``--output-projection``: the dual-module output projection's little module
    (``output.OutputConfig``), for the scripts that take ``--output-ratio``."""
    from .output import OutputConfig
    from .projection import KINDS

    p.add_argument("--output-k", type=positive_int, default=OutputConfig.k,
                   help="projected dims per input half of the output projection's little module (engines and its "
                        "cached artefact of another k carry -k<k>)")
    p.add_argument("--output-projection", choices=KINDS, default="sparse",
                   help="the output little module's projection: sparse (eq. 2) or learned (the directions that carry "
                        "most of the logits' variance; engines and artefact carry -learned)")


def add_max_rows_option(p: argparse.ArgumentParser, default: int) -> None:
    """``--max-rows``: how many rows each little module's regression (eq. 4) is fitted on."""
    p.add_argument("--max-rows", type=positive_int, default=default,
                   help="rows (samples × time steps) each little module is fitted on: more rows, a better fit (a "
                        "learned projection at small k gains most) and a longer fit")


def add_k_option(p: argparse.ArgumentParser) -> None:
    """``--k``: the little module's projected dims set directly, for every script that takes ``--eps``."""
    p.add_argument("--k", type=positive_int, default=None,
                   help="projected dims per input (P_x and P_h), overriding --eps: eq. 3 is a distance bound for eq. "
                        "2's random projection and says nothing about a learned one's k; the rows, engines, builds "
                        "and cached little modules of a set k are named …-k<k>")


def add_baseline_options(p: argparse.ArgumentParser, out_help: str, device_note: "str | None" = "") -> None:
    """``--threads``, ``--out``, ``--results`` and (unless ``device_note`` is None) ``--device``: what the scripts
    that train or prune a baseline take; ``out_help`` says where the checkpoint goes by default."""
    from .checkpoint import DEVICE_HELP, device_arg

    p.add_argument("--threads", type=positive_int, default=None, help="PyTorch threads (default: PyTorch's)")
    if device_note is not None:
        p.add_argument("--device", default="cpu", type=device_arg, help=DEVICE_HELP + device_note)
    p.add_argument("--out", type=Path, default=None, help=out_help)
    p.add_argument("--results", type=Path, default=Path("results/baselines.json"),
                   help="results file of the trained (and pruned) baselines")


def start_baseline_run(a: argparse.Namespace) -> str:
    """What a training or pruning script does once its arguments parse: logging on, ``--threads`` applied; returns
    the git revision of the code it loaded (taken now: a commit made while it trains must not be named)."""
    import logging

    import torch

    from .checkpoint import git_revision

    revision = git_revision()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    return revision
