"""Shared fixtures: tiny models built offline once per session and copied per test.

No test reads ../shared or the network. The tiny GPT-2 has GPT-2's structure (no pad token, byte-level BPE,
1,024 positions, ln_f) at a width that runs in milliseconds; a tiny BERT proves any AutoModel works.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests never write the user's ~/.cache/embedkit: one throwaway cache per session (a subprocess inherits it).
os.environ.setdefault("EMBEDKIT_CACHE_DIR", tempfile.mkdtemp(prefix="embedkit-test-cache-"))


def pytest_configure(config):
    # Tiny models gain nothing from threads, and on a busy 2-core CI machine spinning threads slow them down.
    import torch

    torch.set_num_threads(1)


WORDS = (
    "the a of to and in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do their "
    "time if will way about many then them write would like so these her long make thing see him two has look "
    "more day could go come did number sound no most people my over know water than call first who may down "
    "side been now find any new work part take get place made live where after back little only round man year "
    "came show every good me give our under name very through just form sentence great think say help low line "
    "cat dog bird fish tree car road city music film game ball team win lose money bank loan price market"
).split()


def sample_texts(n: int, seed: int = 0, min_words: int = 1, max_words: int = 40) -> list[str]:
    """Deterministic pseudo-sentences for tests."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))).capitalize() + "."
        for _ in range(n)
    ]


def _build_gpt2(directory: Path) -> Path:
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    corpus = sample_texts(400, seed=1) + ["Émoji 😀 ünïcödé 漢字 שלום مرحبا \t tabs\nnewlines 12345 !?"] * 5
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    raw = directory / "bpe"
    raw.mkdir(parents=True)
    bpe.save_model(str(raw))
    tokenizer = GPT2Tokenizer(str(raw / "vocab.json"), str(raw / "merges.txt"), model_max_length=1024)
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer.pad_token is None  # like GPT-2: no pad token
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=eot,
        eos_token_id=eot,
        activation_function="gelu_new",
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    out = directory / "gpt2"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(raw)
    return out


def _build_bert(directory: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), ".", ",", "!", "?"]
    out = directory / "bert"
    out.mkdir(parents=True)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(out / "vocab.txt"), model_max_length=64)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def _models_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def _gpt2_master(_models_root) -> Path:
    return _build_gpt2(_models_root)


@pytest.fixture(scope="session")
def _bert_master(_models_root) -> Path:
    return _build_bert(_models_root)


@pytest.fixture
def tiny_gpt2(_gpt2_master, tmp_path) -> str:
    """Path of a private copy of the tiny GPT-2 checkpoint (tests may modify it)."""
    dst = tmp_path / "tiny-gpt2"
    shutil.copytree(_gpt2_master, dst)
    return str(dst)


@pytest.fixture(scope="session")
def tiny_gpt2_shared(_gpt2_master) -> str:
    """Read-only tiny GPT-2 shared by the whole session (faster when a test does not modify it)."""
    return str(_gpt2_master)


@pytest.fixture
def tiny_bert(_bert_master, tmp_path) -> str:
    dst = tmp_path / "tiny-bert"
    shutil.copytree(_bert_master, dst)
    return str(dst)


@pytest.fixture(scope="session")
def extractor_factory(tiny_gpt2_shared):
    """Build (and cache) Extractors on the shared tiny GPT-2 by config values, to keep the suite fast."""
    from embedkit import ExtractConfig, Extractor

    cache: dict = {}

    def make(batch_tokens: int | None = None, **config):
        key = (batch_tokens, tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items())))
        if key not in cache:
            config.setdefault("model", tiny_gpt2_shared)
            cache[key] = Extractor(ExtractConfig(**config), device="cpu", batch_tokens=batch_tokens)
        return cache[key]

    return make


@pytest.fixture
def write_csv(tmp_path):
    """Write rows (dicts) to a CSV file and return its path."""
    import csv

    def write(rows: list[dict], name: str = "input.csv", delimiter: str = ",") -> Path:
        path = tmp_path / name
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        return path

    return write


@pytest.fixture
def features_file(tiny_gpt2_shared, tmp_path):
    """Embed labelled pseudo-texts with the tiny GPT-2 and return the Parquet path (for downstream stages)."""
    import csv

    from embedkit import ExtractConfig
    from embedkit.embed import embed_file

    def make(n: int = 60, labels: tuple[str, ...] = ("a", "b", "c"), name: str = "features.parquet", **config) -> Path:
        rows = [
            {"doc_id": f"d{i}", "text": t, "label": labels[i % len(labels)]}
            for i, t in enumerate(sample_texts(n, seed=3))
        ]
        src = tmp_path / (name + ".csv")
        with src.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["doc_id", "text", "label"])
            w.writeheader()
            w.writerows(rows)
        out = tmp_path / name
        config.setdefault("model", tiny_gpt2_shared)
        embed_file(
            src, out, ExtractConfig(**config), id_column="doc_id", keep=("text", "label"), device="cpu", progress=False
        )
        return out

    return make


# ---------------------------------------------------------------------------------------------- shared helpers

RAY_NODE_STORE = 80 * 1024**2  # object store per test Ray node: descriptors, info dicts and index parts travel


def free_socket() -> socket.socket:
    """A TCP socket bound to a free loopback port (load and HTTP tests send traffic to 127.0.0.1 only)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class RunningServer:
    """``embedkit serve`` (uvicorn) in a thread of this process, on a free loopback port."""

    def __init__(self, settings) -> None:
        from embedkit.serve.server import build, uvicorn_server

        self.app, self.services = build(settings)
        self.sock = free_socket()
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn_server(self.app, settings)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


@pytest.fixture(scope="module")
def ray_two_nodes():
    """A real two-node Ray cluster on this machine (head + one worker node, 1 CPU each), joined by this process;
    one per test module. An instance another module left running is shut down first: this one needs its own."""
    ray = pytest.importorskip("ray", reason="the Ray engine needs the ray extra: pip install -e '.[dev]'")
    from ray.cluster_utils import Cluster

    store = RAY_NODE_STORE
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store})
    cluster.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()
