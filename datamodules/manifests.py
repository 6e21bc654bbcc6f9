"""Samples listed in tables: CSV manifests (path, label, optional split and metadata), the exclude and
relabel lists that edit them, and unlabelled inputs to predict (a folder, a CSV or one image)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from datamodules.image_io import IMAGE_EXTENSIONS
from datamodules.sources import SPLITS, DataError, Sample, SourceListing, resolve_listed_path, walk_images


def read_table(file: Path, option: str, *, allow_empty: bool = False):
    """A CSV file as strings (no NA conversion), with stripped column names.

    Raises:
        DataError: the file is empty, or has a header but no rows (unless ``allow_empty``).
    """
    import pandas as pd

    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False, skipinitialspace=True)
    except pd.errors.EmptyDataError:
        raise DataError(
            f"{option}: {file} is empty (0 bytes or no header). Give a CSV file with a header row."
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{option}: {file} is not a readable CSV file ({str(err).splitlines()[0][:200]}).") from None
    table.columns = [c.strip() for c in table.columns]
    if table.empty and not allow_empty:
        raise DataError(f"{option}: {file} has a header ({', '.join(table.columns)}) but no rows.")
    return table


def csv_samples(manifest: str | os.PathLike) -> SourceListing:
    """Reads a manifest with columns ``path``, ``label``, optional ``split`` and any metadata.

    Relative paths are relative to the CSV's folder. Other columns are kept as per-sample
    metadata (camera, altitude, ...), as strings.

    Raises:
        DataError: the file is missing, empty or header-only, a required column is missing, a
            value is empty or unknown, or a path is listed twice.
    """
    manifest = Path(manifest).expanduser()
    if not manifest.is_file():
        raise DataError(f"data.manifest={str(manifest)!r} does not exist. Give the path of a CSV file.")
    table = read_table(manifest, "data.manifest")
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
    paths = _unique_paths(table, manifest)
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


def _unique_paths(table, manifest: Path) -> list[str]:
    paths = [resolve_listed_path(p, manifest.parent) for p in table["path"]]
    twice = [p for p, n in Counter(paths).items() if n > 1]
    if twice:
        raise DataError(f"{manifest}: {len(twice)} path(s) listed more than once, e.g. {twice[0]}. List each once.")
    return paths


def unlabelled_samples(source: str | os.PathLike) -> SourceListing:
    """Images to predict, without labels: a folder (every image below it, at any depth), a CSV
    with a ``path`` column (other columns kept as metadata), or one image file.

    Raises:
        DataError: the path does not exist, or the folder or CSV lists no image.
    """
    source = Path(source).expanduser()
    listing = SourceListing(samples=[])
    if source.is_dir():
        seen: set[str] = set()
        for path in walk_images(source, listing):
            real = str(path.resolve())
            if real not in seen:
                seen.add(real)
                listing.samples.append(Sample(real, None))
    elif source.suffix.lower() == ".csv" and source.is_file():
        table = read_table(source, "input")
        if "path" not in table.columns:
            raise DataError(f"input: {source} has no 'path' column; its columns are {list(table.columns)}.")
        meta_columns = [c for c in table.columns if c not in ("path", "label", "split")]
        for i, path in enumerate(_unique_paths(table, source)):
            listing.samples.append(Sample(path, None, meta={c: table.iloc[i][c] for c in meta_columns}))
    elif source.is_file():
        listing.samples.append(Sample(str(source.resolve()), None))
    else:
        raise DataError(
            f"input={str(source)!r} does not exist. Give a folder of images, a CSV with a 'path' column, "
            "or one image file."
        )
    if not listing.samples:
        raise DataError(f"input={str(source)!r} holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
    return listing


def _rows(index) -> str:
    # Row numbers as a spreadsheet shows them: header is row 1.
    shown = [str(i + 2) for i in list(index)[:5]]
    return ", ".join(shown) + (f" and {len(index) - 5} more" if len(index) > 5 else "")
