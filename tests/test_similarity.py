"""Similarity measures for the sibling filter (engine/similarity.py)."""

from __future__ import annotations

import random

import pytest

from engine.similarity import EmbeddingSimilarity, edit_similarity, levenshtein, make_similarity


def _levenshtein_reference(a: str, b: str) -> int:
    """Full-matrix textbook edit distance, to check the optimised one against."""
    table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(
                table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
    return table[-1][-1]


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("abc", "", 3),
        ("", "abc", 3),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("same", "same", 0),
        ("3 + 4 = 7", "3 + 4 = 8", 1),
        ("abcabc", "abc", 3),
    ],
)
def test_levenshtein_known_values(a: str, b: str, distance: int) -> None:
    assert levenshtein(a, b) == distance == levenshtein(b, a)


def test_levenshtein_matches_the_textbook_table_on_random_strings() -> None:
    generator = random.Random(7)
    for _ in range(300):
        a = "".join(generator.choice("ab c1") for _ in range(generator.randint(0, 12)))
        b = "".join(generator.choice("ab c1") for _ in range(generator.randint(0, 12)))
        assert levenshtein(a, b) == _levenshtein_reference(a, b), (a, b)


def test_edit_similarity_values() -> None:
    matrix = edit_similarity(["kitten", "", "a  b\n", "abc"], ["sitting", "", "a b", "xyz"])
    assert matrix[0][0] == pytest.approx(1 - 3 / 7)
    assert matrix[1][1] == 1.0  # two empty texts are the same
    assert matrix[1][0] == 0.0
    assert matrix[2][2] == 1.0  # whitespace is normalised
    assert matrix[3][3] == 0.0
    assert all(0.0 <= value <= 1.0 for row in matrix for value in row)


def test_edit_similarity_shape() -> None:
    assert edit_similarity(["a", "b"], ["a", "b", "c"]) == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    assert edit_similarity(["a", "b"], []) == [[], []]
    assert edit_similarity([], ["a"]) == []


def test_make_similarity_edit_and_unknown() -> None:
    assert make_similarity("edit") is edit_similarity
    with pytest.raises(ValueError, match="'jaccard'.*cosine, edit"):
        make_similarity("jaccard")


@pytest.fixture(scope="module")
def cosine() -> EmbeddingSimilarity:
    return EmbeddingSimilarity(cache_size=4)


@pytest.mark.slow
def test_cosine_paraphrases_high_unrelated_low_identical_one(cosine: EmbeddingSimilarity) -> None:
    step = "Tom has 5 apples and buys 3 more, so he has 8 apples."
    paraphrase = "Tom had 5 apples, bought 3 more, and now has 8 apples."
    unrelated = "The capital of France is Paris."
    (row,) = cosine([step], [paraphrase, unrelated, step])
    assert row[0] > 0.8
    assert row[1] < 0.5
    assert row[2] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
def test_cosine_matrix_shape_range_and_blank_texts(cosine: EmbeddingSimilarity) -> None:
    candidates = ["First, 12 * 4 = 48.", "", "Step 1: 12 times 4 equals 48."]
    existing = ["12 * 4 = 48", "  \n", "The weather is sunny."]
    matrix = cosine(candidates, existing)
    assert [len(row) for row in matrix] == [3, 3, 3]
    assert all(0.0 <= value <= 1.0 for row in matrix for value in row)
    assert matrix[1] == [0.0, 1.0, 0.0]  # blank against blank only
    assert matrix[0][1] == matrix[2][1] == 0.0
    assert cosine(candidates, []) == [[], [], []]
    assert cosine([], existing) == []


@pytest.mark.slow
def test_cosine_cache_is_bounded_and_gives_the_same_values(cosine: EmbeddingSimilarity) -> None:
    texts = [f"Step {index}: add {index} to the total." for index in range(10)]
    first = cosine(texts[:3], texts[3:6])
    assert len(cosine._embeddings) <= 4
    cosine(texts[6:], texts[:2])
    again = cosine(texts[:3], texts[3:6])
    assert all(row == pytest.approx(first_row, abs=1e-5) for row, first_row in zip(again, first, strict=True))
    assert len(cosine._embeddings) <= 4


@pytest.mark.slow
def test_make_similarity_cosine() -> None:
    measure = make_similarity("cosine")
    assert isinstance(measure, EmbeddingSimilarity)
    assert measure(["x + 1 = 2"], ["x + 1 = 2"])[0][0] == pytest.approx(1.0, abs=1e-4)
