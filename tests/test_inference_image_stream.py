"""Streaming image files in batches: every readable file once, in order; every unreadable one reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from inference.image_stream import ImageStream


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """A fixed-size eval transform for tests: nearest resize to 16 px, scaled to [0, 1]."""
    small = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.NEAREST), dtype=np.float32)
    return torch.from_numpy(small.transpose(2, 0, 1) / 255)


def _refuse_wide(image: np.ndarray) -> torch.Tensor:
    if image.shape[1] > 2 * image.shape[0]:
        raise ValueError("aspect ratio out of range")
    return _to_tensor(image)


@pytest.fixture
def folder(tmp_path):
    """Readable images of several modes and sizes, interleaved with broken files."""
    paths, good = [], []
    for i in range(7):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(np.full((10 + i, 12, 3), 30 * i, dtype=np.uint8)).convert("L" if i % 2 else "RGB").save(p)
        paths.append(str(p))
        good.append(str(p))
        if i == 2:
            (tmp_path / "empty.jpg").write_bytes(b"")
            paths.append(str(tmp_path / "empty.jpg"))
        if i == 4:
            (tmp_path / "page.jpg").write_text("<html>404</html>")
            paths.append(str(tmp_path / "page.jpg"))
    paths.append(str(tmp_path / "missing.png"))
    return paths, good


@pytest.mark.parametrize("num_workers", [0, 1])
def test_every_readable_file_once_in_order_and_the_rest_reported(folder, num_workers):
    paths, good = folder
    stream = ImageStream(paths, _to_tensor, batch_size=3, num_workers=num_workers)
    assert len(stream) == 3  # 7 readable files in batches of 3
    seen, shades = [], []
    for batch in stream:
        assert batch.images.shape[1:] == (3, 16, 16)
        seen += [paths[i] for i in batch.indices.tolist()]
        shades += batch.images[:, 0, 0, 0].tolist()
    assert seen == good
    np.testing.assert_allclose(np.array(shades) * 255, [30 * i for i in range(7)], atol=1)  # pixels match paths
    reasons = {u.path.rsplit("/", 1)[1]: (u.reason, u.found_by) for u in stream.unreadable}
    assert reasons == {
        "empty.jpg": ("empty file (0 bytes)", "scan"),
        "page.jpg": ("not an image (Pillow cannot identify the format)", "scan"),
        "missing.png": ("file not found", "scan"),
    }


def test_files_failing_after_the_scan_are_dropped_from_their_batch_and_reported(folder, tmp_path):
    _, good = folder
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((4, 40, 3), dtype=np.uint8)).save(wide)
    paths = [*good, str(wide)]
    stream = ImageStream(paths, _refuse_wide, batch_size=4)
    assert stream.unreadable == []  # the scan passes every file
    Path(good[5]).unlink()  # gone between the scan and the read
    batches = list(stream)
    seen = [paths[i] for b in batches for i in b.indices.tolist()]
    assert seen == [p for p in good if p != good[5]]
    assert [b.images.shape[0] for b in batches] == [4, 2]  # the second batch lost two of its four files
    assert [(u.path, u.reason, u.found_by) for u in stream.unreadable] == [
        (good[5], "file not found", "load"),
        (str(wide), "cannot be preprocessed (ValueError: aspect ratio out of range)", "load"),
    ]


def test_a_batch_whose_files_all_fail_is_skipped(tmp_path):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((4, 40, 3), dtype=np.uint8)).save(wide)
    ok = tmp_path / "ok.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(ok)
    stream = ImageStream([str(wide), str(ok)], _refuse_wide, batch_size=1)
    batches = list(stream)
    assert len(batches) == 1 and batches[0].indices.tolist() == [1]
    assert [(u.found_by, u.reason) for u in stream.unreadable] == [
        ("load", "cannot be preprocessed (ValueError: aspect ratio out of range)")
    ]
