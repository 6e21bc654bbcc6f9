"""Finding pairs of images that are the same picture: by pixel digest, perceptual hash, or embedding.

Which method finds what (measured on photo crops in ``tests/test_audit_core.py``):

- **exact** (digest of the decoded pixels): byte-different files of identical pixels, e.g. the
  same PNG re-saved, or a JPEG copied under another name. Zero false matches.
- **phash** (64-bit perceptual hash, Hamming distance): re-encodes (JPEG quality 60: <= 2 bits),
  resizes by +-20% (<= 2 bits), brightness +-15% (<= 4 bits), crops of a few pixels (<= 10 bits);
  10,440 pairs of distinct 96-px photo crops measured >= 16 bits apart. It misses mirror images, rotations, large crops
  and recolouring, which move the low frequencies it is made of. It sees only luma, so each hash
  match is confirmed by a 4 x 4 colour thumbnail: the same shape in another colour (a product in
  each of its colours, a grayscale copy of a colour photo) is not a duplicate.
- **embedding** (cosine similarity of backbone features, e.g. the pooled features of the
  pretrained model being fine-tuned): also mirror images, larger crops and re-framings,
  colour changes, the next frame of a video, which the hash misses; it also matches two
  different photos of a very similar scene, so its threshold is strict.

Each search is sub-quadratic in practice: hashes go through faiss's multi-index hashing
(the 64 bits cut into 4 bands of 16; two codes within ``r`` bits agree on some band to within
``r // 4`` bits, so only those buckets are compared), embeddings through an exact inner-product
index for small sets and an HNSW graph above :data:`EXACT_KNN_LIMIT`.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import pandas as pd

from data_audit.properties import COLOUR_VALUES

PAIR_COLUMNS = ("a", "b", "method", "distance")
"""A pair table: row indices ``a < b``, the method that linked them, and its distance
(0 for ``exact``; differing bits of 64 for ``phash``; ``1 - cosine similarity`` for ``embedding``)."""

METHODS = ("exact", "phash", "embedding")

# Most bits two hashes of one picture may differ by: a 2-px crop of a 112-px image measured
# up to 10; distinct photo crops 16 or more.
PHASH_MAX_BITS = 10
# The hash threshold is also kept this many standard deviations below the mean distance of
# random pairs of the data set. Photos: mean 31.5, sd 4.0 bits, so 10 stands. Handwritten
# digits are alike at low frequencies (mean 27, sd 5.8 bits: 33 pairs of different digits share
# a hash), so the threshold drops to 1 bit there rather than pair up thousands of digits.
PHASH_SPREAD = 4.5
# A hash match must also agree in colour layout, within this mean difference of the 4 x 4 colour
# thumbnails (0-255 levels, after matching brightness): copies measured <= 5.1 (a +15% brightness
# that clips highlights), look-alikes in other colours 58 on average, 3 of 945 below 15.
COLOUR_MAX_DIFFERENCE = 12.0
# ... and in structure: the Pearson correlation of the 16 x 16 luma thumbnails at least this.
# Copies of 96-px photo crops measured >= 0.90 (a 2-px crop; JPEG, resizing and brightness >= 0.97;
# >= 0.87 at 64 px, >= 0.97 at 224 px); the one pair of different built-in digits that shares a
# hash and a colour layout (a 1 and a 7) 0.65.
STRUCTURE_MIN_CORRELATION = 0.8
PAIR_BLOCK = 16_384  # candidate pairs whose thumbnails are compared at once
# Cosine similarity (of mean-centred features) from which two images count as the same picture.
# Pooled features of the packaged ImageNet EfficientNet-Lite0 on 96-px photo crops
# (benchmarks/audit_vs_cleanvision.py): mirror images 0.87-0.99, resized and brightened copies
# 0.85-1.0, distinct crops at most 0.84. JPEG q60 copies (0.73-0.89) are left to the hash.
EMBEDDING_MIN_COSINE = 0.9
EMBEDDING_NEIGHBOURS = 10
# Up to this many images the embedding search is exact (a flat index); above, HNSW.
EXACT_KNN_LIMIT = 20_000


def empty_pairs() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "a": np.array([], dtype=np.int64),
            "b": np.array([], dtype=np.int64),
            "method": np.array([], dtype=object),
            "distance": np.array([], dtype=np.float64),
        }
    )


def _pairs(a: np.ndarray, b: np.ndarray, method: str, distance: np.ndarray) -> pd.DataFrame:
    low, high = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    frame = pd.DataFrame({"a": low, "b": high, "method": method, "distance": distance.astype(np.float64)})
    return frame.drop_duplicates(["a", "b"]).reset_index(drop=True)


def exact_pairs(digests: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """Pairs of ``rows`` whose 128-bit pixel digests (``(N, 2)`` uint64) are equal.

    Each set of equal images is linked as a star on its first row (enough for the groups).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        return empty_pairs()
    keys = np.ascontiguousarray(digests[rows]).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    anchor = rows[first[inverse]]
    linked = anchor != rows
    return _pairs(anchor[linked], rows[linked], "exact", np.zeros(int(linked.sum())))


def _hash_codes(phashes: np.ndarray) -> np.ndarray:
    """uint64 hashes as faiss binary codes: ``(N, 8)`` uint8, most significant byte first."""
    return np.ascontiguousarray(phashes.astype(">u8")).view(np.uint8).reshape(-1, 8)


def hash_threshold(
    phashes: np.ndarray,
    *,
    max_bits: int = PHASH_MAX_BITS,
    spread: float = PHASH_SPREAD,
    sample_pairs: int = 200_000,
    seed: int = 0,
) -> tuple[int, dict[str, float]]:
    """The Hamming threshold for this data set: ``min(max_bits, floor(mean - spread * sd))`` of random pairs.

    The mean and sd are estimated on ``sample_pairs`` random pairs, so planted copies (a few
    pairs in thousands) barely move them.

    Returns:
        ``(bits, stats)`` with stats ``{"random_pair_mean_bits", "random_pair_sd_bits"}``.
    """
    n = len(phashes)
    if n < 3:
        return max_bits, {}
    rng = np.random.default_rng(seed)
    a = rng.integers(0, n, sample_pairs)
    b = rng.integers(0, n, sample_pairs)
    keep = a != b
    xor = np.bitwise_xor(phashes[a[keep]], phashes[b[keep]])
    distances = np.unpackbits(xor.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    mean, sd = float(distances.mean()), float(distances.std())
    bits = int(min(max_bits, max(0, math.floor(mean - spread * sd))))
    return bits, {"random_pair_mean_bits": mean, "random_pair_sd_bits": sd}


def hash_pairs(
    phashes: np.ndarray,
    rows: np.ndarray,
    max_bits: int,
    *,
    thumbnails: np.ndarray | None = None,
    max_colour_difference: float = COLOUR_MAX_DIFFERENCE,
    min_structure_correlation: float = STRUCTURE_MIN_CORRELATION,
) -> pd.DataFrame:
    """Pairs of ``rows`` whose perceptual hashes differ in at most ``max_bits`` bits (multi-index hashing).

    Args:
        phashes: ``(N,)`` uint64 hashes of every row of the data set.
        rows: the rows to search.
        max_bits: Hamming threshold.
        thumbnails: ``(N, THUMBNAIL_VALUES)`` thumbnails (:func:`data_audit.properties.colour_thumbnail`);
            when given, a hash match counts only if the colours agree too (:func:`colour_difference`
            at most ``max_colour_difference``) and so does the structure
            (:func:`structure_correlation` at least ``min_structure_correlation``).
        max_colour_difference: in 0-255 levels.
        min_structure_correlation: Pearson correlation, -1 to 1.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        return empty_pairs()
    codes = _hash_codes(phashes[rows])
    index = faiss.IndexBinaryMultiHash(64, 4, 16)
    index.nflip = max_bits // 4  # pigeonhole: some 16-bit band differs by at most max_bits // 4
    index.add(codes)
    limits, distances, neighbours = index.range_search(codes, max_bits + 1)  # faiss: strictly below the radius
    queries = np.repeat(np.arange(len(rows)), np.diff(limits).astype(np.int64))
    keep = queries < neighbours
    a, b, distances = rows[queries[keep]], rows[neighbours[keep]], distances[keep]
    if thumbnails is not None:
        # In blocks of pairs: alike images (digits) give millions of candidates, and a float copy of
        # every pair's thumbnails at once would take gigabytes.
        agree = np.zeros(len(a), dtype=bool)
        for start in range(0, len(a), PAIR_BLOCK):
            block = slice(start, start + PAIR_BLOCK)
            agree[block] = (colour_difference(thumbnails, a[block], b[block]) <= max_colour_difference) & (
                structure_correlation(thumbnails, a[block], b[block]) >= min_structure_correlation
            )
        a, b, distances = a[agree], b[agree], distances[agree]
    return _pairs(a, b, "phash", distances)


def colour_difference(thumbnails: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean absolute difference (0-255 levels) of the colour thumbnails of rows ``a`` and ``b``,
    after scaling ``b``'s to ``a``'s mean brightness (so a brightness change is not a colour change)."""
    ta = thumbnails[a, :COLOUR_VALUES].astype(np.float32)
    tb = thumbnails[b, :COLOUR_VALUES].astype(np.float32)
    scale = (ta.mean(axis=1, keepdims=True) + 1) / (tb.mean(axis=1, keepdims=True) + 1)
    return np.abs(ta - np.clip(tb * scale, 0, 255)).mean(axis=1)


def structure_correlation(thumbnails: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of the 16 x 16 luma thumbnails of rows ``a`` and ``b`` (unchanged by a
    brightness or contrast change); 1 where either is flat (nothing to tell apart)."""
    la = thumbnails[a, COLOUR_VALUES:].astype(np.float32)
    lb = thumbnails[b, COLOUR_VALUES:].astype(np.float32)
    la -= la.mean(axis=1, keepdims=True)
    lb -= lb.mean(axis=1, keepdims=True)
    norm = np.sqrt((la * la).sum(axis=1) * (lb * lb).sum(axis=1))
    return np.where(norm > 0, (la * lb).sum(axis=1) / np.where(norm > 0, norm, 1), 1.0)


def embedding_pairs(
    embeddings: np.ndarray,
    rows: np.ndarray,
    *,
    min_cosine: float = EMBEDDING_MIN_COSINE,
    neighbours: int = EMBEDDING_NEIGHBOURS,
    center: bool = True,
    exact_limit: int = EXACT_KNN_LIMIT,
) -> pd.DataFrame:
    """Pairs of ``rows`` whose embeddings have cosine similarity of at least ``min_cosine``.

    Args:
        embeddings: ``(N, D)`` float array aligned with the data set's rows (the rows not in
            ``rows``, e.g. unreadable images, are ignored).
        rows: the rows to search.
        min_cosine: similarity threshold, on centred features when ``center``.
        neighbours: nearest neighbours looked at per image; a group larger than this is still
            found whole, through its members' links.
        center: subtract the mean embedding first. Pooled CNN features are all positive, so
            any two images have a high raw cosine; centring leaves what tells them apart.
        exact_limit: up to this many rows the search is exact, above it approximate (HNSW).
    """
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) < 2:
        return empty_pairs()
    x = np.ascontiguousarray(embeddings[rows], dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be an N x D array, got shape {embeddings.shape}")
    if center:
        x -= x.mean(axis=0, keepdims=True)
    faiss.normalize_L2(x)
    k = min(neighbours + 1, len(rows))
    if len(rows) <= exact_limit:
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
    else:
        index = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(64, 2 * k)
        # Threads insert into the graph in no fixed order, so the graph (and which near
        # duplicates it finds) would change from run to run: built on one thread, searched on all.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(x)
        finally:
            faiss.omp_set_num_threads(threads)
    similarity, found = index.search(x, k)
    queries = np.repeat(np.arange(len(rows)), k).reshape(len(rows), k)
    keep = (found >= 0) & (found != queries) & (similarity >= min_cosine)
    return _pairs(rows[queries[keep]], rows[found[keep]], "embedding", 1.0 - similarity[keep])
