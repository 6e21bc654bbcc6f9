"""The catalogue as one machine-readable file, ``<run>/catalogue.json``: columns per split (paths,
labels, metadata) plus the summary and the data decisions. Reading it back checks every value's
type: the file is data a user may hand over, never code or config."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from datamodules.catalogue import FORMAT, VERSION, Catalogue
from datamodules.sources import DataError, Sample
from runs import files


def save(catalogue: Catalogue, path: str | os.PathLike) -> None:
    """Writes ``catalogue`` as one JSON file, atomically."""
    meta_keys = sorted({k for group in catalogue.splits.values() for s in group for k in s.meta})
    data = {
        "format": FORMAT,
        "version": VERSION,
        "source": catalogue.source,
        "location": catalogue.location,
        "class_names": catalogue.class_names,
        "num_folds": catalogue.num_folds,
        "fold": catalogue.fold,
        "summary": catalogue.summary,
        "meta_columns": meta_keys,
        "splits": {
            split: {
                "path": [s.path for s in group],
                "label": [s.label for s in group],
                "meta": [[s.meta.get(k, "") for k in meta_keys] for s in group],
            }
            for split, group in catalogue.splits.items()
        },
        "unreadable": catalogue.unreadable,
        "excluded": catalogue.excluded,
        "relabelled": catalogue.relabelled,
        "injected_noise": catalogue.injected_noise,
    }
    files.write_text(path, json.dumps(data) + "\n")


def load(path: str | os.PathLike) -> Catalogue:
    """Reads a saved catalogue.

    Raises:
        DataError: the file is missing or not a lookout catalogue.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path} does not exist: that run folder has no saved samples (a run of an older version, or not "
            "a run folder). Give the data options instead, e.g. data=folder data.root=DIR."
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
        meta_keys = _strings(data["meta_columns"])
        splits = {}
        for split, columns in data["splits"].items():
            paths, labels = _strings(columns["path"]), columns["label"]
            if len(labels) != len(paths) or len(columns["meta"]) != len(paths):
                raise ValueError(f"split {split!r}: columns of different lengths")
            splits[str(split)] = [
                Sample(
                    p,
                    None if label is None else str(label),
                    str(split),
                    dict(zip(meta_keys, _strings(m), strict=True)),
                )
                for p, label, m in zip(paths, labels, columns["meta"], strict=True)
            ]
        return Catalogue(
            source=str(data["source"]),
            location=str(data["location"]),
            class_names=_strings(data["class_names"]),
            splits=splits,
            summary=dict(data["summary"]),
            unreadable=list(data.get("unreadable", [])),
            excluded=list(data.get("excluded", [])),
            relabelled=list(data.get("relabelled", [])),
            injected_noise=list(data.get("injected_noise", [])),
            num_folds=int(data.get("num_folds", 0)),
            fold=int(data.get("fold", 0)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise DataError(f"{path} is not a lookout sample catalogue ({err}).") from None


def _strings(values: Any) -> list[str]:
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError("expected a list of strings")
    return list(values)
