"""Label noise injection, exclude and relabel: exactly the listed samples change."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest

from datamodules import Catalogue, DataError
from datamodules.label_edits import inject_label_noise
from datamodules.sources import Sample
from runs.folder import RunFolder


def _samples(n_per_class: int = 100, classes: int = 5) -> list[Sample]:
    return [Sample(f"/x/{c}_{i}.png", f"c{c}") for c in range(classes) for i in range(n_per_class)]


def test_uniform_noise_flips_the_fraction_to_other_classes_reproducibly():
    names = [f"c{c}" for c in range(5)]
    a, b = _samples(), _samples()
    flips_a = inject_label_noise(a, names, fraction=0.2, kind="uniform", seed=3)
    flips_b = inject_label_noise(b, names, fraction=0.2, kind="uniform", seed=3)
    assert len(flips_a) == 100
    assert [(f.path, f.noisy_label) for f in flips_a] == [(f.path, f.noisy_label) for f in flips_b]
    assert all(f.noisy_label != f.original_label for f in flips_a)
    assert sum(s.label != "c" + s.path.split("/")[-1].split("_")[0] for s in a) == 100
    # Uniform over the other classes: all four other classes receive flips from class c0.
    assert len({f.noisy_label for f in flips_a if f.original_label == "c0"}) == 4
    different = inject_label_noise(_samples(), names, fraction=0.2, kind="uniform", seed=4)
    assert {f.path for f in different} != {f.path for f in flips_a}


def test_class_pair_noise_moves_each_class_to_the_next():
    names = [f"c{c}" for c in range(5)]
    flips = inject_label_noise(_samples(), names, fraction=0.2, kind="class_pair", seed=0)
    assert Counter(f.original_label for f in flips) == {n: 20 for n in names}
    assert all(names.index(f.noisy_label) == (names.index(f.original_label) + 1) % 5 for f in flips)


def test_noise_arguments_are_checked():
    with pytest.raises(DataError, match=r"label_noise=1\.5"):
        inject_label_noise(_samples(), ["c0"], fraction=1.5, kind="uniform", seed=0)
    with pytest.raises(DataError, match="label_noise_type='gaussian'"):
        inject_label_noise(_samples(), ["c0", "c1"], fraction=0.1, kind="gaussian", seed=0)


def test_catalogue_records_injected_noise(digits_folder, tmp_path):
    dm = Catalogue.build(source="folder", root=str(digits_folder), label_noise=0.2)
    dm.write_reports(RunFolder(tmp_path))
    with open(tmp_path / "reports" / "injected_noise.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == round(0.2 * len(dm.splits["train"]))
    for row in rows:
        sample = dm.splits["train"][int(row["index"])]
        assert sample.path == row["path"] and sample.label == row["noisy_label"] != row["original_label"]
        assert row["original_label"] == sample.path.split("/")[-2]
    # Validation labels are never flipped.
    assert all(s.label == s.path.split("/")[-2] for s in dm.splits["val"])


def _write(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def test_exclude_drops_exactly_the_listed_samples(digits_folder, tmp_path):
    base = Catalogue.build(source="folder", root=str(digits_folder))
    listed = [base.splits["train"][i].path for i in (0, 5, 9)] + [base.splits["val"][2].path]
    relative = [str(p.replace(str(digits_folder) + "/", "")) for p in listed[2:]]  # relative to the data root
    _write(tmp_path / "drop.csv", ["path", "note"], [[p, "blurry"] for p in listed[:2] + relative])
    dm = Catalogue.build(source="folder", root=str(digits_folder), exclude=str(tmp_path / "drop.csv"))
    dm.write_reports(RunFolder(tmp_path / "r"))
    kept = {s.path for group in dm.splits.values() for s in group}
    before = {s.path for group in base.splits.values() for s in group}
    assert before - kept == set(listed)
    assert dm.summary["excluded_by_user"] == 4
    with open(tmp_path / "r" / "reports" / "excluded.csv") as f:
        assert {r["path"] for r in csv.DictReader(f)} == set(listed)


def test_relabel_changes_exactly_the_listed_labels(digits_folder, tmp_path):
    base = Catalogue.build(source="folder", root=str(digits_folder))
    target, val_target = base.splits["train"][4], base.splits["val"][0]
    new_label = "digit_8" if target.label != "digit_8" else "digit_7"
    new_val_label = "digit_1" if val_target.label != "digit_1" else "digit_2"
    _write(tmp_path / "fix.csv", ["path", "label"], [[target.path, new_label], [val_target.path, new_val_label]])
    dm = Catalogue.build(source="folder", root=str(digits_folder), relabel=str(tmp_path / "fix.csv"))
    dm.write_reports(RunFolder(tmp_path / "r"))
    # Every image stays in its split, the relabelled ones included.
    for split in base.splits:
        assert [s.path for s in dm.splits[split]] == [s.path for s in base.splits[split]], split
    changed = [
        (a.path, b.label)
        for split in base.splits
        for a, b in zip(base.splits[split], dm.splits[split], strict=True)
        if a.label != b.label
    ]
    assert changed == [(target.path, new_label), (val_target.path, new_val_label)]
    with open(tmp_path / "r" / "reports" / "relabelled.csv") as f:
        assert list(csv.DictReader(f)) == [
            {"path": target.path, "split": "train", "old_label": target.label, "new_label": new_label},
            {"path": val_target.path, "split": "val", "old_label": val_target.label, "new_label": new_val_label},
        ]


@pytest.mark.parametrize("option", ["exclude", "relabel"])
def test_unknown_paths_are_rejected(digits_folder, tmp_path, option):
    _write(tmp_path / "list.csv", ["path", "label"], [["/nowhere/cat.png", "digit_1"]])
    with pytest.raises(DataError, match=rf"data.{option}: 1 of 1 path\(s\) .* are not in this data set"):
        Catalogue.build(source="folder", root=str(digits_folder), **{option: str(tmp_path / "list.csv")})


def test_relabel_to_an_unknown_class_is_rejected(digits_folder, tmp_path):
    path = next(digits_folder.glob("digit_0/*.png"))
    _write(tmp_path / "fix.csv", ["path", "label"], [[str(path), "digit_eleven"]])
    with pytest.raises(DataError, match="'digit_eleven', which is not a class"):
        Catalogue.build(source="folder", root=str(digits_folder), relabel=str(tmp_path / "fix.csv"))


def test_label_suspects_report_works_as_exclude_and_relabel_input(digits_folder, tmp_path):
    dm = Catalogue.build(source="folder", root=str(digits_folder))
    s = dm.splits["train"][1]
    _write(
        tmp_path / "label_suspects.csv",
        ["split", "index", "path", "given_label", "suggested_label", "score"],
        [["train", 1, s.path, s.label, "digit_3" if s.label != "digit_3" else "digit_4", 0.9]],
    )
    fixed = Catalogue.build(source="folder", root=str(digits_folder), relabel=str(tmp_path / "label_suspects.csv"))
    assert fixed.splits["train"][1].label in ("digit_3", "digit_4") and fixed.splits["train"][1].label != s.label
    dropped = Catalogue.build(source="folder", root=str(digits_folder), exclude=str(tmp_path / "label_suspects.csv"))
    assert len(dropped.splits["train"]) == len(dm.splits["train"]) - 1
    assert np.bincount(fixed.targets("train")).sum() == len(dm.splits["train"])
