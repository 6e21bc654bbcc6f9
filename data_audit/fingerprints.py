"""One pass over the images: decode each once, keep a few numbers per image.

Everything the audit needs from the pixels comes out of this pass: a digest of the decoded
pixels (exact duplicates), a 64-bit perceptual hash (near duplicates) and the
:mod:`data_audit.properties` statistics (quality flags, slices). Only these compact arrays are
kept, about 150 bytes per image (15 MB for 100,000 images), never the pixels, so memory stays
flat however many images there are. Files that cannot be read become reasons, not errors.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data_audit.properties import (
    PROPERTY_NAMES,
    THUMBNAIL_VALUES,
    colour_thumbnail,
    luma,
    perceptual_hash,
    property_values,
    working_copy,
)
from datamodules.image_io import UnreadableImageError, check_image, read_rgb

EXECUTORS = ("process", "thread")
# Images per task: large enough that a process pool's messaging costs little next to the
# decoding, small enough that the progress callback moves on a 5,000-image run.
CHUNK_SIZE = 128

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` from the calling thread after each chunk of images."""


@dataclass
class Fingerprints:
    """What the pass keeps; row ``i`` of every array describes ``paths[i]``.

    Attributes:
        paths: the image paths, in the order given.
        readable: ``(N,)`` bool, False where the file could not be decoded.
        reasons: ``{row: reason}`` for every unreadable row (the same wording as the data scan).
        digests: ``(N, 2)`` uint64, a 128-bit BLAKE2b digest of the decoded pixels and their shape
            (zero where unreadable): equal digests are the same picture, whatever the file format.
        phashes: ``(N,)`` uint64 perceptual hashes (:func:`data_audit.properties.perceptual_hash`).
        thumbnails: ``(N, THUMBNAIL_VALUES)`` uint8 colour and structure thumbnails
            (:func:`data_audit.properties.colour_thumbnail`).
        properties: ``(N, len(PROPERTY_NAMES))`` float32, NaN where unreadable.
        seconds: wall time of the pass.
        executor: ``"process"`` or ``"thread"``, as run.
        workers: how many workers ran it.
    """

    paths: list[str]
    readable: np.ndarray
    reasons: dict[int, str]
    digests: np.ndarray
    phashes: np.ndarray
    thumbnails: np.ndarray
    properties: np.ndarray
    seconds: float = 0.0
    executor: str = "thread"
    workers: int = 1
    property_names: tuple[str, ...] = field(default=PROPERTY_NAMES)

    def properties_frame(self) -> pd.DataFrame:
        """The properties as a DataFrame with one column per name in :data:`PROPERTY_NAMES` plus ``path``."""
        frame = pd.DataFrame(self.properties, columns=list(self.property_names))
        frame.insert(0, "path", self.paths)
        return frame


def fingerprint_image(rgb: np.ndarray) -> tuple[bytes, int, np.ndarray, list[float]]:
    """The digest, perceptual hash, colour thumbnail and properties of one decoded ``H x W x 3`` uint8 image."""
    rgb = np.ascontiguousarray(rgb)
    digest = hashlib.blake2b(str(rgb.shape).encode(), digest_size=16)
    digest.update(rgb.data)
    work = working_copy(rgb)
    gray = luma(work)  # one luma of the working copy for the hash, the thumbnail and the properties
    return digest.digest(), perceptual_hash(gray), colour_thumbnail(work, gray), property_values(rgb, work, gray)


def _fingerprint_chunk(paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[int, str]]:
    """Runs in a worker: decodes ``paths`` one by one; returns packed arrays and the reasons of failures."""
    digests = np.zeros((len(paths), 16), dtype=np.uint8)
    phashes = np.zeros(len(paths), dtype=np.uint64)
    thumbnails = np.zeros((len(paths), THUMBNAIL_VALUES), dtype=np.uint8)
    properties = np.full((len(paths), len(PROPERTY_NAMES)), np.nan, dtype=np.float32)
    reasons: dict[int, str] = {}
    for row, path in enumerate(paths):
        try:
            digest, phash, thumbnail, values = fingerprint_image(read_rgb(path))
        except UnreadableImageError as err:
            # The data scan's wording ("empty file (0 bytes)", "unsupported format (HEIC) ..."),
            # which names the cause more precisely than the decoder's error.
            reasons[row] = check_image(path, "full") or str(err)
            continue
        except Exception as err:  # an audit reports a file it cannot handle; it never stops on one
            reasons[row] = f"cannot be audited ({type(err).__name__}: {err})"
            continue
        digests[row] = np.frombuffer(digest, dtype=np.uint8)
        phashes[row] = phash
        thumbnails[row] = thumbnail
        properties[row] = values
    return digests, phashes, thumbnails, properties, reasons


def _default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _worker_init() -> None:
    import cv2

    cv2.setNumThreads(1)  # one image per worker at a time; OpenCV's own threads would only contend


def _executor(kind: str, workers: int) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(max_workers=workers)
    # Not fork: a process that has used OpenCV's thread pool (the training process has) hands
    # a forked child a pool that never answers, and the pass hangs. A fork server that has
    # imported this module once starts each worker cheaply instead.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([__name__])
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init)


def fingerprint_paths(
    paths: Sequence[str],
    *,
    workers: int | None = None,
    executor: str = "thread",
    progress: ProgressCallback | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> Fingerprints:
    """Decodes every image once, in parallel, and keeps only its fingerprints.

    Args:
        paths: image files, in the order the result's rows will have.
        workers: parallel workers; default one per available CPU core.
        executor: ``"thread"`` (default) or ``"process"``. Threads start at once and decoding
            releases the GIL; the rest is many small numpy and OpenCV calls that hold it, so on
            tiny images (28 px digits) a second thread adds little. Processes run those in
            parallel but cost seconds to start (a fork server that imports this module, and
            today with it torch through ``datamodules``; see ``_executor``): on 10,000 images of
            64-96 px, threads took 6.1-6.8 s, processes 10.4 s (``benchmarks/audit_scale.py``).
        progress: called as ``progress(done, total)`` after each chunk, from this thread.
        chunk_size: images per task.

    Returns:
        :class:`Fingerprints`; unreadable files are rows with ``readable=False`` and a reason.

    Raises:
        ValueError: ``executor`` is not one of :data:`EXECUTORS`.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r} must be one of {EXECUTORS}")
    start = time.perf_counter()
    paths = [os.fspath(p) for p in paths]
    total = len(paths)
    workers = max(1, workers or _default_workers())
    chunks = [paths[i : i + chunk_size] for i in range(0, total, chunk_size)]
    if len(chunks) <= 1 or workers == 1:
        executor, workers = "thread", 1
    digests = np.zeros((total, 16), dtype=np.uint8)
    phashes = np.zeros(total, dtype=np.uint64)
    thumbnails = np.zeros((total, THUMBNAIL_VALUES), dtype=np.uint8)
    properties = np.full((total, len(PROPERTY_NAMES)), np.nan, dtype=np.float32)
    reasons: dict[int, str] = {}
    done = 0
    if workers == 1:
        results = map(_fingerprint_chunk, chunks)
        pool = None
    else:
        pool = _executor(executor, workers)
        results = pool.map(_fingerprint_chunk, chunks)
    try:
        for index, (chunk_digests, chunk_phashes, chunk_thumbnails, chunk_properties, chunk_reasons) in enumerate(
            results
        ):
            offset = index * chunk_size
            rows = slice(offset, offset + len(chunk_phashes))
            digests[rows], phashes[rows] = chunk_digests, chunk_phashes
            thumbnails[rows], properties[rows] = chunk_thumbnails, chunk_properties
            reasons.update({offset + row: reason for row, reason in chunk_reasons.items()})
            done += len(chunk_phashes)
            if progress is not None:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    readable = np.ones(total, dtype=bool)
    readable[list(reasons)] = False
    return Fingerprints(
        paths=paths,
        readable=readable,
        reasons=reasons,
        digests=digests.view(np.uint64).reshape(total, 2),
        phashes=phashes,
        thumbnails=thumbnails,
        properties=properties,
        seconds=time.perf_counter() - start,
        executor=executor,
        workers=workers,
    )
