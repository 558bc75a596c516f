"""Throughput and memory of embedkit next to its peers, on the same texts, in one process, interleaved.

Methods (all float32 on CPU unless named otherwise, mean pooling of the last layer):

    embedkit        Extractor: length-sorted token-budget batches, hooks instead of output_hidden_states
    embedkit-l{K}   the same, stopped after block K (``--also-layer``, default 6): costs about K/12
    embedkit-int8   backend="int8" (dynamic int8 linear layers; approximate, cosine to embedkit reported)
    embedkit-bf16   backend="bf16" (where the CPU has native bf16: torch's bf16 linear layers or OpenVINO bf16,
                    whichever measured faster, cached; else it says so and runs fp32); embedkit-bf16-torch and
                    embedkit-bf16-openvino force each of the two engines (native-bf16 CPUs only)
    embedkit-auto   backend="auto" (torch or OpenVINO fp32, whichever measured faster here; measured once, cached)
    embedkit-openvino, embedkit-ort-int8   backend="openvino" / "ort-int8": embedkit's batches, its ONNX export of the
                    requested layers with pooling in the graph, run by OpenVINO fp32 / ONNX Runtime dynamic int8
    eager           PyTorch eager fp32 (AutoModel), fed the same length-sorted <= --batch-tokens batches as the peers
    ort, ort-int8   ONNX Runtime: fp32 graph-optimised, and its dynamic int8 quantisation (benchmarks/peers.py)
    openvino        OpenVINO fp32; openvino-bf16: its default precision (bf16 where the CPU has it natively)
    st              sentence-transformers: models.Transformer + models.Pooling("mean"), encode(batch_size=32)
    pipeline        transformers pipeline("feature-extraction"), one text per call, mean over tokens
    naive           batches of 32 in input order, padded, output_hidden_states=True, masked mean

Every run times every method once, in a rotated order so none always runs first on a warm cache; ratios to
sentence-transformers and to eager are taken within a run and the median over runs is reported, so a shared,
noisy machine moves both sides of a ratio together. The slow baselines (pipeline, naive) run ``--baseline-runs``
times only.
Peak memory is RSS sampled every 5 ms during each call, reported as the rise above the RSS before the call.
Each method also gets tokens per CPU-second of this process: on a shared machine wall time includes waiting
for a core, CPU time does not (threads spinning while they wait still count, so it is not a perfect cure).

Checks (exit 1 when one fails): embedkit's rows have cosine >= 0.99999 to sentence-transformers'; int8 rows
have cosine >= 0.99 to embedkit's. Peers and bf16 report min cosine to eager (or to embedkit without eager).
The runtime peers are the optional extra ``peers`` (pip install -e .[peers]); a missing one is skipped, said so.

Run:  .venv/bin/python benchmarks/throughput.py --model /tmp/gpt2-small [--n 500] [--runs 3]
      [--corpus FILE_OR_DIR] [--text-column text] [--methods embedkit,st,...] [--json results.json]
      Peers (pip install -e .[peers]):
      --methods eager,embedkit,embedkit-int8,embedkit-bf16,ort,ort-int8,openvino,openvino-bf16
      On a CPU with native bf16 (avx512_bf16 or amx_bf16), the bf16 target of #21:
      --methods eager,embedkit-bf16,embedkit-bf16-torch,embedkit-bf16-openvino,openvino-bf16,openvino
Make the model with: .venv/bin/python -m embedkit.testing.checkpoint /tmp/gpt2-small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere

from benchmarks import peers  # noqa: E402
from benchmarks.corpus import load_fortunes  # noqa: E402

DEFAULT_METHODS = ("embedkit", "embedkit-layer", "embedkit-int8", "st", "pipeline", "naive")
RUNTIME_METHODS = {"embedkit-openvino": "openvino", "embedkit-ort-int8": "ort-int8"}
# method -> the engine of backend bf16 it forces (extract/backend_choice.py)
BF16_ENGINES = {"embedkit-bf16-torch": "torch-bf16", "embedkit-bf16-openvino": "openvino-bf16"}
CHOSEN = ("embedkit-bf16", *BF16_ENGINES, "embedkit-auto")
ALL_METHODS = DEFAULT_METHODS + (*CHOSEN, *RUNTIME_METHODS) + peers.PEERS
BASELINES = ("pipeline", "naive")
EXACT_MIN_COSINE = 0.99999
APPROX_MIN_COSINE = 0.99


# ----------------------------------------------------------------------------------------------- corpus


def load_texts(corpus: str | None, text_column: str, n: int, seed: int) -> list[str]:
    """Texts from the fortunes (default), a fortune-style directory, a .jsonl/.csv/.tsv/.parquet file with
    ``text_column``, a file of ``%``-separated entries, or a plain file with one text per line."""
    import random

    if corpus is None or Path(corpus).is_dir():
        return [t for t, _ in load_fortunes(n, seed=seed, **({"directory": corpus} if corpus else {}))]
    path = Path(corpus)
    if path.suffix == ".jsonl":
        texts = [json.loads(line)[text_column] for line in path.open(encoding="utf-8") if line.strip()]
    elif path.suffix in (".csv", ".tsv"):
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            texts = [row[text_column] for row in csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")]
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        texts = pq.read_table(path, columns=[text_column]).column(text_column).to_pylist()
    else:
        raw = path.read_text(encoding="utf-8", errors="replace")
        lines = raw.splitlines()
        if any(line.strip() == "%" for line in lines):
            texts = [t.strip() for t in "\n".join(lines).split("\n%\n")]
        else:
            texts = lines
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    return texts if n >= len(texts) else random.Random(seed).sample(texts, n)


# ---------------------------------------------------------------------------------------------- memory


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The flags that decide CPU matmul speed per precision (AVX-512, VNNI, AMX, bf16), as /proc/cpuinfo lists them."""
    from embedkit.extract.bf16 import cpu_flags as flags

    keep = sorted(f for f in flags() if f.startswith(("avx512", "amx", "avx_vnni")) or "bf16" in f or f == "avx2")
    return " ".join(keep) or "none of avx2/avx512/vnni/amx/bf16"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRss:
    """Highest RSS seen while the block runs (sampled every 5 ms in a thread; Linux /proc)."""

    def __enter__(self) -> PeakRss:
        self.start = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def rise_mb(self) -> float:
        return (self.peak - self.start) / 2**20


# --------------------------------------------------------------------------------------------- methods


def mean_pool(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def make_methods(args, names: list[str]) -> dict:
    """Build every requested method as ``name -> (label, fn(texts) -> np.ndarray [n, dim])``."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from embedkit import ExtractConfig, Extractor

    methods = {}
    common = dict(device="cpu", batch_tokens=args.batch_tokens)
    if "embedkit" in names:
        ex = Extractor(ExtractConfig(model=args.model, layers=(args.layer,)), **common)
        methods["embedkit"] = (f"embedkit (layer {ex.config.layers[0]})", ex.embed)
    if "embedkit-layer" in names and args.also_layer:
        ex_k = Extractor(ExtractConfig(model=args.model, layers=(args.also_layer,)), **common)
        methods["embedkit-layer"] = (f"embedkit (layer {ex_k.config.layers[0]})", ex_k.embed)
    if "embedkit-int8" in names:
        ex_q = Extractor(ExtractConfig(model=args.model, layers=(args.layer,), backend="int8"), **common)
        methods["embedkit-int8"] = (f"embedkit int8 (layer {ex_q.config.layers[0]})", ex_q.embed)
    # auto and bf16 choose their engine when built (measured if not cached: a benchmark is a large job), outside
    # the timed calls; the label says which engine runs.
    for name in CHOSEN:
        if name in names:
            backend = "auto" if name == "embedkit-auto" else "bf16"
            config = ExtractConfig(model=args.model, layers=(args.layer,), backend=backend)
            ex_c = Extractor(config, **common, job_tokens=10**9, engine=BF16_ENGINES.get(name))
            methods[name] = (f"embedkit {backend} on {ex_c.engine} (layer {ex_c.config.layers[0]})", ex_c.embed)
    for name, backend in RUNTIME_METHODS.items():
        if name in names:
            ex_r = Extractor(ExtractConfig(model=args.model, layers=(args.layer,), backend=backend), **common)
            methods[name] = (f"embedkit {backend} (layer {ex_r.config.layers[0]})", ex_r.embed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    for peer in peers.PEERS:
        if peer not in names:
            continue
        if peers.missing(peer):
            print(f"skipping {peer}: not installed: {', '.join(peers.missing(peer))} (pip install -e .[peers])")
            continue
        budget = args.batch_tokens or 1024
        methods[peer] = peers.make_peer(peer, args.model, tokenizer, budget, args.threads or torch.get_num_threads())
    if "st" in names:
        from sentence_transformers import SentenceTransformer, models

        transformer = models.Transformer(args.model, max_seq_length=1024)
        if transformer.tokenizer.pad_token is None:  # GPT-2: ST's own tokenizer copy only
            transformer.tokenizer.pad_token = transformer.tokenizer.eos_token
        dim = transformer.get_word_embedding_dimension()
        st = SentenceTransformer(modules=[transformer, models.Pooling(dim, "mean")], device="cpu")
        methods["st"] = (
            "sentence-transformers (bs 32)",
            lambda texts: st.encode(texts, batch_size=32, convert_to_numpy=True),
        )
    if "pipeline" in names:
        from transformers import pipeline

        pipe = pipeline("feature-extraction", model=args.model, device="cpu", dtype=torch.float32)
        kwargs = {"truncation": True, "max_length": 1024}

        def run_pipeline(texts):
            outs = pipe(texts, return_tensors=True, tokenize_kwargs=kwargs)
            return np.stack([o[0].mean(0).numpy() for o in outs])

        methods["pipeline"] = ("HF pipeline (per text)", run_pipeline)
    if "naive" in names:
        tok = AutoTokenizer.from_pretrained(args.model)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model = AutoModel.from_pretrained(args.model, dtype=torch.float32).eval()

        def run_naive(texts):
            out = []
            for i in range(0, len(texts), 32):
                enc = tok(texts[i : i + 32], padding=True, truncation=True, max_length=1024, return_tensors="pt")
                with torch.inference_mode():
                    hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
                out.append(mean_pool(hidden, enc["attention_mask"]).numpy())
            return np.concatenate(out)

        methods["naive"] = ("naive (bs 32, input order)", run_naive)
    return methods


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", default=os.environ.get("EMBEDKIT_MODEL", "/tmp/gpt2-small"), help="model directory or hub id"
    )
    ap.add_argument("--corpus", default=None, help="file or fortune directory [default: Debian fortunes]")
    ap.add_argument("--text-column", default="text")
    ap.add_argument("--n", type=int, default=500, help="texts (drawn at random with --seed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of embedkit and sentence-transformers")
    ap.add_argument("--baseline-runs", type=int, default=1, help="timed runs of the slow pipeline and naive baselines")
    ap.add_argument("--layer", type=int, default=-1, help="layer for embedkit [default: -1, the last]")
    ap.add_argument("--also-layer", type=int, default=6, help="a shallower layer reported too (0: skip)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="embedkit's token budget [default: the library's]")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every method [default: torch's]")
    ap.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated subset of {','.join(ALL_METHODS)}"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the raw timings here")
    args = ap.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    names = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(names) - set(ALL_METHODS))
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(ALL_METHODS)}")

    texts = load_texts(args.corpus, args.text_column, args.n, args.seed)
    lengths = [min(len(ids), 1024) for ids in AutoTokenizer.from_pretrained(args.model)(texts)["input_ids"]]
    tokens = int(sum(lengths))
    print(f"{len(texts)} texts, {tokens} tokens (mean {np.mean(lengths):.1f}, max {max(lengths)}); model {args.model}")
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start"
    )
    print(f"CPU flags: {cpu_flags()}")

    methods = make_methods(args, names)
    for _, fn in methods.values():  # warm-up: first-call allocations and lazy imports stay out of the timings
        fn(texts[:8])

    timings: dict[str, list[float]] = {name: [] for name in methods}
    # CPU seconds of this process: on a shared machine wall time also counts time spent waiting for a core.
    cpu_timings: dict[str, list[float]] = {name: [] for name in methods}
    memory: dict[str, float] = {name: 0.0 for name in methods}
    vectors: dict[str, np.ndarray] = {}
    order = list(methods)
    for run in range(args.runs):
        rotated = order[run % len(order) :] + order[: run % len(order)]
        for name in rotated:
            if name in BASELINES and run >= args.baseline_runs:
                continue
            with PeakRss() as mem:
                start, cpu_start = time.perf_counter(), time.process_time()
                out = methods[name][1](texts)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            timings[name].append(seconds)
            cpu_timings[name].append(cpu_seconds)
            memory[name] = max(memory[name], mem.rise_mb)
            vectors[name] = np.asarray(out, dtype=np.float32)
            print(
                f"  run {run + 1}: {methods[name][0]:<44} {tokens / seconds:8.1f} tokens/s "
                f"({tokens / cpu_seconds:.1f} per CPU-second)",
                flush=True,
            )

    failures = []
    cosine_notes = {}
    if "embedkit" in vectors and "st" in vectors:
        cos = row_cosines(vectors["embedkit"], vectors["st"])
        cosine_notes["embedkit"] = f"min cos to st {cos.min():.6f}"
        if cos.min() < EXACT_MIN_COSINE:
            failures.append(f"embedkit vs sentence-transformers: min cosine {cos.min():.6f} < {EXACT_MIN_COSINE}")
    for name in ("pipeline", "naive"):
        if name in vectors and "st" in vectors:
            cosine_notes[name] = f"min cos to st {row_cosines(vectors[name], vectors['st']).min():.6f}"
    if "embedkit-int8" in vectors and "embedkit" in vectors:
        cos = row_cosines(vectors["embedkit-int8"], vectors["embedkit"])
        cosine_notes["embedkit-int8"] = f"min cos to fp32 {cos.min():.4f} (mean {cos.mean():.4f})"
        if cos.min() < APPROX_MIN_COSINE:
            failures.append(f"int8 vs fp32: min cosine {cos.min():.4f} < {APPROX_MIN_COSINE}")
    reference = "eager" if "eager" in vectors else "embedkit"
    for name in ("embedkit", "embedkit-int8", *CHOSEN, *RUNTIME_METHODS) + peers.PEERS:
        if name in vectors and reference in vectors and name != reference:
            cos = row_cosines(vectors[name], vectors[reference])
            note = f"min cos to {reference} {cos.min():.6f} (mean {cos.mean():.6f})"
            cosine_notes[name] = "; ".join(filter(None, (cosine_notes.get(name), note)))

    def ratio_to_st(name: str, table: dict[str, list[float]], ref: str = "st") -> str:
        if ref not in table or name == ref:
            return "1.00x" if name == ref else "-"
        pairs = [st / own for st, own in zip(table[ref], table[name])]  # same run, same machine state
        return f"{np.median(pairs):.2f}x"

    print(f"\nload average {os.getloadavg()[0]:.1f} at end; medians over runs (n runs in brackets)\n")
    header = (
        f"| {'method':<44} | {'tokens/s':>9} | {'texts/s':>8} | {'peak RSS +MB':>12} | {'vs st':>6} "
        f"| {'tokens/CPU-s':>12} | {'vs st (CPU)':>11} | {'vs eager':>8} | check"
    )
    print(header)
    print("|" + "|".join("-" * (len(c) + 0) for c in header.split("|")[1:]))
    results = {}
    for name, (label, _) in methods.items():
        median, cpu_median = float(np.median(timings[name])), float(np.median(cpu_timings[name]))
        results[name] = {
            "label": label,
            "seconds": timings[name],
            "cpu_seconds": cpu_timings[name],
            "tokens": tokens,
            "texts": len(texts),
            "tokens_per_s": tokens / median,
            "tokens_per_cpu_s": tokens / cpu_median,
            "peak_rss_rise_mb": memory[name],
            "vs_st": ratio_to_st(name, timings),
            "vs_st_cpu": ratio_to_st(name, cpu_timings),
            "vs_eager": ratio_to_st(name, timings, "eager"),
            "check": cosine_notes.get(name, ""),
        }
        print(
            f"| {label + f' [{len(timings[name])}]':<44} | {tokens / median:9.1f} | {len(texts) / median:8.2f} | "
            f"{memory[name]:12.0f} | {ratio_to_st(name, timings):>6} | {tokens / cpu_median:12.1f} | "
            f"{ratio_to_st(name, cpu_timings):>11} | {ratio_to_st(name, timings, 'eager'):>8} | "
            f"{cosine_notes.get(name, '')}"
        )
    if args.json:
        args.json.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
