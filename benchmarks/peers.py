"""Runtime peers for benchmarks/throughput.py (#21): PyTorch eager, ONNX Runtime and OpenVINO on the same batches.

Every peer gets the same input as embedkit: texts tokenised, cut at 1,024 tokens, sorted by length and grouped
into padded batches of at most ``budget`` tokens (rows x longest row), then mean pooling of the last layer over
real tokens in float32, put back in input order. The model is exported once to ONNX (``torch.onnx.export``, the
TorchScript exporter: no onnxscript needed) into embedkit's cache directory, keyed by the checkpoint's files and
the torch version; the int8 model is ORT's dynamic quantisation of that export.

The runtimes are the optional extra ``peers`` (onnxruntime, openvino, onnx for ORT's quantiser); a peer whose
package is missing is skipped with a line saying so.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

PEERS = ("eager", "ort", "ort-int8", "openvino", "openvino-bf16")
NEEDS = {"ort": ("onnxruntime",), "ort-int8": ("onnxruntime", "onnx"), "openvino": ("openvino",)}
NEEDS["openvino-bf16"] = NEEDS["openvino"]
MAX_TOKENS = 1024


def missing(peer: str) -> list[str]:
    """The packages ``peer`` needs that are not installed."""
    return [name for name in NEEDS.get(peer, ()) if importlib.util.find_spec(name) is None]


def batches(tokenizer, texts: list[str], budget: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """(order, [(input_ids, attention_mask)]): length-sorted padded int64 batches of <= ``budget`` tokens."""
    ids = [row[:MAX_TOKENS] or [tokenizer.eos_token_id] for row in tokenizer(texts)["input_ids"]]
    order = np.argsort([len(row) for row in ids], kind="stable")
    out, start = [], 0
    while start < len(order):
        end = start + 1
        # sorted ascending: a batch's longest row is its last one
        while end < len(order) and (end - start + 1) * len(ids[order[end]]) <= budget:
            end += 1
        rows = [ids[i] for i in order[start:end]]
        longest = max(len(r) for r in rows)
        input_ids = np.full((len(rows), longest), tokenizer.eos_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), longest), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        out.append((input_ids, mask))
        start = end
    return order, out


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float32)
    return (hidden.astype(np.float32) * m).sum(1) / np.maximum(m.sum(1), 1)


def _runner(tokenizer, budget: int, forward: Callable[[np.ndarray, np.ndarray], np.ndarray]):
    def run(texts: list[str]) -> np.ndarray:
        order, groups = batches(tokenizer, texts, budget)
        pooled = np.concatenate([mean_pool(forward(ids, mask), mask) for ids, mask in groups])
        out = np.empty_like(pooled)
        out[order] = pooled
        return out

    return run


def _cache_dir(model: str) -> Path:
    import torch

    from embedkit.extract.kernel_choice import cache_dir

    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(Path(model).glob("*")):  # a local checkpoint: its files' names, sizes and times
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    digest.update(model.encode())
    return cache_dir() / "bench-onnx" / digest.hexdigest()[:16]


def export_onnx(model: str) -> Path:
    """GPT-2 (any AutoModel) to ONNX: inputs input_ids and attention_mask, output last_hidden_state; cached."""
    import torch
    from transformers import AutoModel

    path = _cache_dir(model) / "model.onnx"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    net = LastHidden(AutoModel.from_pretrained(model, dtype=torch.float32).eval())
    ids = torch.ones((2, 8), dtype=torch.long)
    # A padded example: traced with an all-ones mask, transformers may skip building the attention mask (is_causal)
    # and the export would ignore padding.
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    partial = path.with_suffix(".partial.onnx")
    with torch.inference_mode():
        torch.onnx.export(
            net,
            (ids, mask),
            str(partial),
            input_names=["input_ids", "attention_mask"],
            output_names=["last_hidden_state"],
            dynamic_axes={n: {0: "batch", 1: "tokens"} for n in ("input_ids", "attention_mask", "last_hidden_state")},
            opset_version=17,
            dynamo=False,
        )
    partial.replace(path)
    return path


def _ort_int8(fp32: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = fp32.with_name("model-int8.onnx")
    if not path.exists():
        partial = path.with_suffix(".partial.onnx")
        quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
        partial.replace(path)
    return path


def make_peer(name: str, model: str, tokenizer, budget: int, threads: int) -> tuple[str, Callable]:
    """(label, fn(texts) -> [n, dim] float32) for one of ``PEERS``."""
    if name == "eager":
        import torch
        from transformers import AutoModel

        eager = AutoModel.from_pretrained(model, dtype=torch.float32).eval()

        def forward(ids, mask):
            with torch.inference_mode():
                out = eager(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), use_cache=False)
            return out.last_hidden_state.numpy()

        return "PyTorch eager fp32", _runner(tokenizer, budget, forward)
    onnx_path = export_onnx(model)
    if name in ("ort", "ort-int8"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        path = _ort_int8(onnx_path) if name == "ort-int8" else onnx_path
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        label = f"ONNX Runtime {ort.__version__} " + ("int8 dynamic" if name == "ort-int8" else "fp32 optimised")
        return label, _runner(
            tokenizer, budget, lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        )
    if name in ("openvino", "openvino-bf16"):
        import openvino as ov

        core = ov.Core()
        # fp32 pinned; "bf16" is OpenVINO's default precision, which is bf16 only where the CPU has it natively.
        config = {"INFERENCE_PRECISION_HINT": "f32"} if name == "openvino" else {}
        config["INFERENCE_NUM_THREADS"] = str(threads)
        compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", config)
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")
        request = compiled.create_infer_request()

        def forward(ids, mask):
            return request.infer({"input_ids": ids, "attention_mask": mask})[0]

        precision = getattr(precision, "get_type_name", lambda: str(precision))()  # an ov.Type: "f32", "bf16"
        kind = "fp32" if name == "openvino" else "default precision"
        label = f"OpenVINO {ov.__version__.split('-')[0]} {kind} ({precision})"
        return label, _runner(tokenizer, budget, forward)
    raise ValueError(f"unknown peer {name!r}")
