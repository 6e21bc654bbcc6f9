"""Reading odd images safely, and the pre-flight scan of unreadable files."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from datamodules import Catalogue, ImageDataModule, LoaderOptions, Preprocessing
from datamodules.catalogue import summary_counts_add_up
from datamodules.image_io import UnreadableImageError, check_image, read_rgb, scan_images
from runs.folder import RunFolder

GOOD = [
    "rgb.png",
    "gray.png",
    "rgba.png",
    "palette.gif",
    "cmyk.jpg",
    "gray16.png",
    "exif_rotated.jpg",
    "bilevel.bmp",
    "photo.tif",
    "photo.webp",
]
BAD = {
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "empty.jpg": "empty file",
    "error_page.jpg": "not an image",
    "phone.heic": "unsupported format",
}
SKIPPED = [".hidden.png", ".DS_Store", "notes.txt", "labels.json"]


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def write_odd_files(folder, seed: int = 0) -> None:
    """One of every kind of file real folders contain."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    photo.save(folder / "rgb.png")
    photo.convert("L").save(folder / "gray.png")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.new("L", photo.size, 0))  # fully transparent
    rgba.save(folder / "rgba.png")
    photo.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    photo.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.full((30, 30), 65535, np.uint16)).save(folder / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the camera was turned; display rotated 90 degrees clockwise
    (folder / "exif_rotated.jpg").write_bytes(_jpeg_bytes(Image.new("RGB", (20, 10), (200, 0, 0)), exif=exif))
    photo.convert("1").save(folder / "bilevel.bmp")
    photo.save(folder / "photo.tif")
    photo.save(folder / "photo.webp")
    full = _jpeg_bytes(photo)
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    png = (folder / "rgb.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "error_page.jpg").write_text("<html><body>403 Forbidden</body></html>")
    (folder / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    for name in SKIPPED:
        (folder / name).write_text("x")


@pytest.fixture(scope="module")
def odd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    for c in ("cats", "dogs"):
        write_odd_files(root / c)
    (root / "cats" / ".thumbnails").mkdir()
    (root / "cats" / ".thumbnails" / "x.png").write_bytes(b"")
    return root


def test_readable_odd_images_become_upright_rgb(odd_folder):
    for name in GOOD:
        image = read_rgb(odd_folder / "cats" / name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
    # Orientation 6: a 20 x 10 (w x h) image is shown 10 wide and 20 tall.
    rotated = read_rgb(odd_folder / "cats" / "exif_rotated.jpg")
    assert rotated.shape[:2] == (20, 10)
    # 16-bit full scale maps to 255 (Pillow's convert("L") would clip garbage instead).
    assert read_rgb(odd_folder / "cats" / "gray16.png").min() == 255
    # Transparent pixels over white.
    assert read_rgb(odd_folder / "cats" / "rgba.png").min() == 255
    gray = read_rgb(odd_folder / "cats" / "gray.png")
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_scan_finds_every_bad_file_with_its_reason(odd_folder, mode):
    paths = [str(odd_folder / "cats" / n) for n in GOOD + list(BAD)]
    reasons = scan_images(paths, mode=mode, workers=4)
    assert set(reasons) == {str(odd_folder / "cats" / n) for n in BAD}
    for name, expected in BAD.items():
        assert expected in reasons[str(odd_folder / "cats" / name)], (name, reasons[str(odd_folder / "cats" / name)])


def test_unreadable_file_raises_a_short_reason(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match=r"not an image|empty|truncated"):
        read_rgb(tmp_path / "a.jpg")
    assert check_image(tmp_path / "missing.png") == "file not found"


def test_datamodule_excludes_and_lists_bad_files_and_counts_add_up(odd_folder, tmp_path):
    catalogue = Catalogue.build(source="folder", root=str(odd_folder), val_fraction=0.3)
    catalogue.write_reports(RunFolder(tmp_path))
    summary = json.loads((tmp_path / "reports" / "data_summary.json").read_text())
    per_class_images = len(GOOD) + len(BAD)
    assert summary["found"] == 2 * per_class_images
    assert summary["unreadable"] == 2 * len(BAD)
    assert sum(summary["used"].values()) == 2 * len(GOOD)
    assert summary_counts_add_up(summary)
    # Hidden files, the hidden folder and non-image extensions are skipped, and counted.
    skipped = summary["skipped_on_purpose"]
    assert skipped["hidden file or folder"] == 2 * 2 + 1
    assert skipped["not an image extension (.txt)"] == 2 and skipped["not an image extension (.json)"] == 2
    with open(tmp_path / "reports" / "unreadable.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["unreadable"]
    assert {r["path"].rsplit("/", 1)[1] for r in rows} == set(BAD)
    assert all(r["reason"] and r["found_by"] == "scan" for r in rows)
    # Every used sample is readable through the training pipeline.
    dm = ImageDataModule(catalogue, _preprocessing(32))
    dm.setup("fit")
    for split in ("train", "val"):
        for item in dm.dataset(split):
            assert "error" not in item and tuple(item["image"].shape) == (3, 32, 32)


def test_a_file_that_breaks_after_the_scan_is_reported_not_fatal(digits_folder, tmp_path):
    import shutil

    root = tmp_path / "data"
    shutil.copytree(digits_folder, root)
    catalogue = Catalogue.build(source="folder", root=str(root), val_fraction=0.2)
    dm = ImageDataModule(catalogue, _preprocessing(16), loader=LoaderOptions(batch_size=8, num_workers=0))
    victim = dm.samples["train"][3].path
    with open(victim, "wb") as f:
        f.write(b"\x89PNG garbage")
    batches = list(dm.train_dataloader())
    failed = [f for b in batches for f in b["failed"]]
    assert [index for index, _ in failed] == [3]
    assert "not an image" in failed[0][1]
    seen = sum(len(b["index"]) for b in batches)
    assert seen == len(dm.samples["train"]) - 1


def _preprocessing(size: int) -> Preprocessing:
    return Preprocessing.resolve({"input_size": (3, size, size), "mean": (0.5,) * 3, "std": (0.5,) * 3})
