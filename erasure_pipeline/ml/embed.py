"""A stateless text embedder, the chunker for declared text columns, and the embedder a declaration names.

The default embedder is a hashing vectoriser (word uni- and bi-grams) followed by a fixed,
seeded Gaussian projection to ``dimensions``: nothing is learnt from the data, so no
embedding model ever holds personal data and erasure never has to retrain one.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Callable

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from erasure_pipeline.core.declared import load
from erasure_pipeline.core.policy import PolicyError

HASH_FEATURES = 2**14
PROJECTION_SEED = 20_261_122
POINT_NAMESPACE = uuid.UUID("6c1f3f0e-8f3a-5b8e-9a51-3e0d4c2a7b10")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def chunk_text(text: str, max_chars: int) -> list[str]:
    """Split at sentence ends into chunks of at most ``max_chars`` (a longer sentence is cut)."""
    chunks: list[str] = []
    current = ""
    for sentence in _SENTENCE.split(text.strip()):
        while len(sentence) > max_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(sentence[:max_chars])
            sentence = sentence[max_chars:]
        if current and len(current) + 1 + len(sentence) > max_chars:
            chunks.append(current)
            current = sentence
        else:
            current = f"{current} {sentence}" if current else sentence
    if current:
        chunks.append(current)
    return chunks


@functools.lru_cache(maxsize=4)
def _projection(dimensions: int) -> np.ndarray:
    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((HASH_FEATURES, dimensions)) / np.sqrt(dimensions)).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _vectoriser() -> HashingVectorizer:
    return HashingVectorizer(n_features=HASH_FEATURES, ngram_range=(1, 2), alternate_sign=True, norm="l2")


def embed(texts: list[str], dimensions: int) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text."""
    if not texts:
        return np.zeros((0, dimensions), dtype=np.float32)
    sparse = _vectoriser().transform(texts)
    dense = np.asarray(sparse @ _projection(dimensions), dtype=np.float32)
    norms = np.linalg.norm(dense, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return dense / norms


def point_id(record: str, chunk_index: int, chunk: str) -> str:
    """Deterministic, content-addressed point id: same record chunk, same id; edited text, new id."""
    digest = hashlib.sha256(chunk.encode("utf-8")).hexdigest()[:16]
    return str(uuid.uuid5(POINT_NAMESPACE, f"{record}\x00{chunk_index}\x00{digest}"))


Embedder = Callable[[list[str], int], np.ndarray]


def embedder_for(policy) -> Embedder:
    """The declared embedder (``embedder.function``), or the stateless hashing default.

    A declared one is called as ``embed(texts, dimensions)`` and must return one row of
    ``dimensions`` floats per text; it must be stateless too (learnt from no data), or erasure
    could not reach what it learnt."""
    if policy.embedder.function is None:
        return embed
    func = load(policy.embedder.function, "embedder.function", policy.code_dirs)

    def declared(texts: list[str], dimensions: int) -> np.ndarray:
        if not texts:
            return np.zeros((0, dimensions), dtype=np.float32)
        out = np.asarray(func(texts, dimensions), dtype=np.float32)
        if out.shape != (len(texts), dimensions):
            raise PolicyError(f"field 'embedder.function': returned shape {out.shape} for {len(texts)} texts, "
                              f"expected ({len(texts)}, {dimensions}) (vectors.dimensions)")
        return out

    return declared
