"""How alike two options are, for the similarity filter (state merge).

Each measure is a ``SimilarityFn``: ``(candidates, existing) -> matrix`` where
``matrix[i][j]`` in [0, 1] says how alike ``candidates[i]`` is to
``existing[j]`` (1 = the same). A freshly sampled option above the run's
threshold against any sibling is filtered.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from engine.models import embedding_model_path
from engine.types import SimilarityFn

if TYPE_CHECKING:
    import numpy as np

MEASURES = ("cosine", "edit")
"""The names ``make_similarity`` accepts."""


class EmbeddingSimilarity:
    """Cosine similarity of sentence embeddings (sentence-transformers), clipped
    to [0, 1]: negative cosines (unrelated texts) count as 0.

    Embeddings of texts seen before are cached, least recently used dropped
    first, because a node's siblings are compared again at every expansion.
    Blank (empty or whitespace-only) texts have no meaningful embedding: a pair
    involving one scores 1.0 when both are blank and 0.0 otherwise.
    """

    def __init__(self, model: str = "minilm", *, device: str = "cpu", cache_size: int = 10_000) -> None:
        """Load the embedding model.

        Args:
            model: an embedding preset name or a local sentence-transformers
                directory (see ``engine.models.embedding_model_path``).
            device: torch device to embed on.
            cache_size: most embeddings kept, >= 1.

        Raises:
            ValueError: ``cache_size`` < 1.
            ModelError: no such embedding model.
        """
        if cache_size < 1:
            raise ValueError(f"cache_size must be >= 1, got {cache_size}")
        path = embedding_model_path(model)
        # The model is local; without this, sentence-transformers may still ask the hub about it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device=device)
        self._cache_size = cache_size
        self._embeddings: OrderedDict[str, np.ndarray] = OrderedDict()

    def __call__(self, candidates: Sequence[str], existing: Sequence[str]) -> list[list[float]]:
        """Similarity matrix, ``len(candidates)`` rows of ``len(existing)`` values in [0, 1]."""
        import numpy as np

        if not candidates or not existing:
            return [[] for _ in candidates]
        embeddings = self._embed([text for text in (*candidates, *existing) if text.strip()])
        # Blank texts get a zero vector as a placeholder; their pairs are set below.
        blank = np.zeros(self._model.get_embedding_dimension(), dtype=np.float32)
        candidate_vectors = np.stack([embeddings.get(text, blank) for text in candidates])
        existing_vectors = np.stack([embeddings.get(text, blank) for text in existing])
        matrix = np.clip(candidate_vectors @ existing_vectors.T, 0.0, 1.0).tolist()
        for row, candidate in zip(matrix, candidates, strict=True):
            for column, sibling in enumerate(existing):
                if not candidate.strip() or not sibling.strip():
                    row[column] = float(not candidate.strip() and not sibling.strip())
        return matrix

    def _embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Unit-norm embeddings of ``texts``, from the cache where possible."""
        missing = list(dict.fromkeys(text for text in texts if text not in self._embeddings))
        if missing:
            encoded = self._model.encode(missing, normalize_embeddings=True, convert_to_numpy=True)
            self._embeddings.update(zip(missing, encoded, strict=True))
        found: dict[str, np.ndarray] = {}
        for text in texts:
            self._embeddings.move_to_end(text)
            found[text] = self._embeddings[text]
        while len(self._embeddings) > self._cache_size:
            self._embeddings.popitem(last=False)
        return found


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and
    substitutions that turn ``a`` into ``b``; in [0, max(len(a), len(b))].

    Two-row dynamic programme over the strings with their common prefix and
    suffix removed: O(len(a) * len(b)) time, O(min(len(a), len(b))) memory.
    """
    prefix = 0
    shortest = min(len(a), len(b))
    while prefix < shortest and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while suffix < shortest - prefix and a[-1 - suffix] == b[-1 - suffix]:
        suffix += 1
    a = a[prefix : len(a) - suffix]
    b = b[prefix : len(b) - suffix]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    previous = list(range(len(b) + 1))
    for row, a_char in enumerate(a, start=1):
        current = [row]
        left = row
        for column, b_char in enumerate(b):
            # Cheapest of: insert b_char (left + 1), delete a_char (up), substitute
            # (diagonal, free on a match). Compared inline: min() is ~3x slower here.
            left += 1
            up = previous[column + 1] + 1
            if up < left:
                left = up
            diagonal = previous[column] + (a_char != b_char)
            if diagonal < left:
                left = diagonal
            current.append(left)
        previous = current
    return previous[-1]


def edit_similarity(candidates: Sequence[str], existing: Sequence[str]) -> list[list[float]]:
    """``1 - levenshtein(a, b) / max(len(a), len(b))`` on whitespace-normalised
    text (runs of whitespace become one space, ends stripped); 1.0 for two empty
    texts. Matrix of ``len(candidates)`` rows of ``len(existing)`` values in [0, 1]."""
    normalised_existing = [" ".join(text.split()) for text in existing]
    matrix: list[list[float]] = []
    for candidate in candidates:
        a = " ".join(candidate.split())
        row = []
        for b in normalised_existing:
            longest = max(len(a), len(b))
            row.append(1.0 if longest == 0 else 1.0 - levenshtein(a, b) / longest)
        matrix.append(row)
    return matrix


def make_similarity(measure: str, *, embedding_model: str = "minilm") -> SimilarityFn:
    """The similarity measure named ``measure``: "cosine" (sentence embeddings
    from ``embedding_model``, loaded now) or "edit" (normalised edit distance).

    Raises:
        ValueError: an unknown measure.
    """
    if measure == "cosine":
        return EmbeddingSimilarity(embedding_model)
    if measure == "edit":
        return edit_similarity
    raise ValueError(f"unknown similarity measure {measure!r}; use one of {', '.join(MEASURES)}")
