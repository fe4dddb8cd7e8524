"""The engines users would pick instead: PyTorch cells (oneDNN/MKL) and ONNX Runtime's LSTM/GRU.

ONNX graphs are written node by node (one LSTM/GRU step, batch 1) so the gate orders are
explicit: ONNX orders LSTM gates i, o, f, c and GRU gates z, r, h; PyTorch i, f, g, o and r, z, n;
PyTorch's GRU applies r after the recurrent product, i.e. ``linear_before_reset=1``.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn as nn

from .little import BigLayer

log = logging.getLogger(__name__)


def torch_cell(layer: BigLayer) -> nn.Module:
    cell = (nn.LSTMCell if layer.rnn_type == "LSTM" else nn.GRUCell)(layer.input_size, layer.hidden)
    with torch.no_grad():
        cell.weight_ih.copy_(layer.w_ih)
        cell.weight_hh.copy_(layer.w_hh)
        cell.bias_ih.copy_(layer.b_ih)
        cell.bias_hh.copy_(layer.b_hh)
    return cell.eval()


def _reorder(w: np.ndarray, H: int, order: list[int]) -> np.ndarray:
    return np.concatenate([w[i * H : (i + 1) * H] for i in order], axis=0)


def onnx_step_model(layer: BigLayer) -> bytes:
    """Serialized ONNX model computing one step: (X (1,1,D), h0 (1,1,H)[, c0]) -> (Y_h[, Y_c])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, D = layer.hidden, layer.input_size
    lstm = layer.rnn_type == "LSTM"
    order = [0, 3, 1, 2] if lstm else [1, 0, 2]  # torch -> onnx gate order
    W = _reorder(layer.w_ih.numpy(), H, order)[None].astype(np.float32)
    R = _reorder(layer.w_hh.numpy(), H, order)[None].astype(np.float32)
    B = np.concatenate([_reorder(layer.b_ih.numpy(), H, order), _reorder(layer.b_hh.numpy(), H, order)])[None]
    inits = [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"),
             numpy_helper.from_array(B.astype(np.float32), "B")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 1, D]),
              helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, 1, H])]
    outputs = [helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, 1, H])]
    if lstm:
        inputs.append(helper.make_tensor_value_info("c0", TensorProto.FLOAT, [1, 1, H]))
        outputs.append(helper.make_tensor_value_info("Y_c", TensorProto.FLOAT, [1, 1, H]))
        node = helper.make_node("LSTM", ["X", "W", "R", "B", "", "h0", "c0"], ["", "Y_h", "Y_c"], hidden_size=H)
    else:
        node = helper.make_node("GRU", ["X", "W", "R", "B", "", "h0"], ["", "Y_h"], hidden_size=H, linear_before_reset=1)
    graph = helper.make_graph([node], "step", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnxruntime_session(layer: BigLayer, threads: int, spin: bool = True):
    """An ONNX Runtime session of one step on its own thread pool; ``spin=False``: its threads sleep as soon as a
    run ends (a cold benchmark's twin session must not keep spinning on the cores the timed one needs)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(onnx_step_model(layer), opts, providers=["CPUExecutionProvider"])


class OpenVINOStep:
    """The one-step ONNX graph compiled by OpenVINO for the CPU, fp32, latency mode.

    ``run(None, feeds)`` mirrors an ONNX Runtime session so both peers share the bench loop.
    f32 is forced: on CPUs with bf16 support OpenVINO otherwise computes in bf16.
    """

    def __init__(self, layer: BigLayer, threads: int) -> None:
        import os
        import tempfile

        import openvino as ov

        core = ov.Core()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "step.onnx")
            with open(path, "wb") as f:
                f.write(onnx_step_model(layer))
            model = core.read_model(path)
            self.compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                              "PERFORMANCE_HINT": "LATENCY",
                                                              "INFERENCE_PRECISION_HINT": "f32",
                                                              "ENABLE_CPU_PINNING": False})
        self.request = self.compiled.create_infer_request()
        self.outputs = list(self.compiled.outputs)

    def run(self, _output_names, feeds: dict) -> list:
        result = self.request.infer(feeds)
        return [result[o] for o in self.outputs]
