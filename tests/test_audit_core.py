"""The data-audit core on a planted set of real photo crops (tests/audit_planted.py) and on the built-in digits.

Which method catches which copy (asserted below): the pixel digest catches re-saved files of
identical pixels; the perceptual hash catches JPEG q60, +-20% resizes, +-15% brightness and
2-px crops; only embeddings catch mirror images.
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from data_audit import (
    FILES,
    PROPERTY_NAMES,
    class_samples,
    duplicate_groups,
    fail_on_check,
    image_properties,
    leaked_pairs,
    leaked_paths,
    quality_outliers,
    run_audit,
    write_audit,
)
from data_audit.near_duplicates import STRUCTURE_MIN_CORRELATION, hash_pairs, structure_correlation
from data_audit.properties import colour_thumbnail, perceptual_hash
from datamodules.image_io import read_rgb
from datamodules.sources import DataError, Sample
from tests.audit_planted import NEAR_KINDS, build, crops, photos

QUALITY_FLAG = {"blank": "low_information"}  # planted kind -> flag name, where they differ


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def cheap(planted):
    return run_audit(planted.samples, executor="thread")


def _group_pairs(findings) -> set[frozenset[str]]:
    pairs = set()
    for group in duplicate_groups(findings):
        pairs |= {frozenset(p) for p in combinations(group.paths, 2)}
    return pairs


def _toy_embedding(path: str) -> np.ndarray:
    """A mirror-invariant stand-in for backbone features: a 16 x 16 luma thumbnail plus its mirror image."""
    gray = cv2.cvtColor(cv2.resize(read_rgb(path), (16, 16), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    gray = gray.astype(np.float32)
    gray = (gray - gray.mean()) / (gray.std() + 1e-6)
    return (gray + gray[:, ::-1]).ravel()


def test_duplicate_pairs_recall_and_precision(planted, cheap):
    truth = planted.true_pairs(include={"exact", *NEAR_KINDS})
    found = _group_pairs(cheap)
    recall = len(found & truth) / len(truth)
    precision = len(found & planted.true_pairs()) / len(found)
    assert len(truth) >= 30
    assert recall >= 0.95, sorted(map(sorted, truth - found))
    assert precision >= 0.95, sorted(map(sorted, found - planted.true_pairs()))
    # Mirror images are left to the embeddings: the hash does not link them.
    flips = {p for p, kind in planted.kind.items() if kind == "flip"}
    assert not flips & set(cheap.duplicates["path"])


def test_exact_copies_are_found_by_the_pixel_digest(planted, cheap):
    exact = [p for p, kind in planted.kind.items() if kind == "exact"]
    methods = cheap.duplicates.set_index("path").loc[exact, "method"]
    assert (methods == "exact").all()
    assert any(p.endswith(".bmp") for p in exact)  # other bytes, other format, same pixels


def test_every_cross_split_pair_is_leakage(planted, cheap):
    split = {s.path: s.split for s in planted.samples}
    cross = [pair for pair in planted.true_pairs(include={"exact", *NEAR_KINDS}) if len({split[p] for p in pair}) == 2]
    assert len(cross) >= 10
    leaked = set(cheap.leakage["path"])
    order = {"train": 0, "val": 1, "test": 2}
    for pair in cross:
        later = max(pair, key=lambda p: order[split[p]])
        assert later in leaked, sorted(pair)
    assert set(leaked_paths(cheap)) == {p for p in leaked if split[p] in ("val", "test")}
    for pair in leaked_pairs(cheap):
        assert order[pair.twin_split] < order[pair.split]


def test_every_conflicting_copy_is_a_conflict(planted, cheap):
    conflicts = cheap.conflicts
    assert planted.conflicting <= set(conflicts["path"])
    assert (conflicts.groupby("group_id")["label"].nunique() > 1).all()
    assert fail_on_check(cheap, ["conflicting_labels"]).count("conflicting_labels: ") == 1


def test_planted_quality_problems_are_flagged_and_clean_photos_are_not(planted, cheap, tmp_path):
    quality = cheap.quality.set_index("path")
    planted_paths = [p for paths in planted.quality.values() for p in paths]
    hits = sum(bool(quality.loc[p, QUALITY_FLAG.get(kind, kind)]) for kind, ps in planted.quality.items() for p in ps)
    assert hits / len(planted_paths) >= 0.95
    # Clean rate over every textured crop of every photo (more than the set uses).
    clean = []
    for name, image in photos().items():
        for i, patch in enumerate(crops(image)):
            path = tmp_path / f"{name}_{i}.png"
            cv2.imwrite(str(path), patch[..., ::-1])
            clean.append(Sample(str(path), name, "train"))
    flags = run_audit(clean, executor="thread").quality["flags"]
    assert len(clean) > 100
    assert (flags != "").mean() <= 0.01, flags[flags != ""].tolist()


def test_full_mode_adds_what_only_embeddings_see(planted):
    embeddings = np.stack([_toy_embedding(s.path) for s in planted.samples])
    # The toy features are cruder than a backbone's: distinct crops reach 0.94, so a stricter threshold.
    full = run_audit(planted.samples, mode="full", embeddings=embeddings, embedding_min_cosine=0.96, executor="thread")
    flips = {p for p, kind in planted.kind.items() if kind == "flip"}
    found = _group_pairs(full)
    flip_pairs = planted.true_pairs(include={"flip"}) - planted.true_pairs(include=set())
    assert flip_pairs <= found
    by_path = full.duplicates.set_index("path")
    assert (by_path.loc[sorted(flips), "method"] == "embedding").all()
    precision = len(found & planted.true_pairs()) / len(found)
    assert precision >= 0.95


def test_hash_distances_of_each_copy_kind(planted):
    """The figures quoted in data_audit.near_duplicates: copies within 10 bits, distinct crops 16 or more apart."""
    hashes = {s.path: perceptual_hash(cv2.cvtColor(read_rgb(s.path), cv2.COLOR_RGB2GRAY)) for s in planted.samples}
    source = {fam: p for p, fam in planted.family.items() if p not in planted.kind}
    for path, kind in planted.kind.items():
        bits = bin(hashes[path] ^ hashes[source[planted.family[path]]]).count("1")
        if kind in NEAR_KINDS or kind == "exact":
            assert bits <= 10, (kind, bits)
        else:
            assert bits > 10, (kind, bits)
    clean = np.array([hashes[p] for p in planted.clean], dtype=np.uint64)
    assert hash_pairs(clean, np.arange(len(clean)), 15).empty


def test_image_properties_names_and_units():
    gray = np.full((50, 200, 3), 128, dtype=np.uint8)
    props = image_properties(gray)
    assert tuple(props) == PROPERTY_NAMES
    assert props["width"] == 200 and props["height"] == 50 and props["aspect_ratio"] == 4.0
    assert props["brightness"] == pytest.approx(128) and props["contrast"] == pytest.approx(0)
    assert props["entropy"] == 0 and props["chroma"] == 0 and props["sharpness"] == 0
    photo = image_properties(photos()["chelsea"])
    assert photo["colourfulness"] > 15 and photo["chroma"] > 10 and 4 < photo["entropy"] <= 8
    assert photo["sharpness"] > image_properties(cv2.GaussianBlur(photos()["chelsea"], (0, 0), 4))["sharpness"] * 3


def test_unreadable_files_are_exclusions_and_counts_add_up(tmp_path, planted):
    empty = tmp_path / "empty.png"
    empty.touch()
    html = tmp_path / "page.jpg"
    html.write_text("<html>not an image</html>")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(Path(planted.clean[0]).read_bytes()[:300])
    known = tmp_path / "known.png"
    bad = [Sample(str(p), "x", "train") for p in (empty, html, truncated, known)]
    samples = planted.samples[:10] + bad
    findings = run_audit(samples, executor="thread", unreadable={str(known): "file not found"})
    reasons = findings.exclusions.set_index("path")["reason"]
    assert set(reasons.index) == {str(p) for p in (empty, html, truncated, known)}
    assert reasons[str(empty)].startswith("empty file") or reasons[str(empty)].startswith("truncated")
    assert reasons[str(html)].startswith("not an image")
    assert reasons[str(known)] == "file not found"
    counts = findings.counts()
    assert counts["found"] == len(samples) == counts["audited"] + counts["unreadable"]
    assert counts["unreadable"] == 4


def test_report_files_read_back(planted, cheap, tmp_path):
    out = tmp_path / "reports" / "audit"
    paths = write_audit(cheap, out)
    assert {p.name for p in out.iterdir()} == set(FILES.values())  # no temporary files left behind
    for key in ("duplicates", "leakage", "conflicting_labels", "quality", "unreadable", "suggested_exclude"):
        table = pd.read_csv(paths[key])
        assert "path" in table.columns, key
    duplicates = pd.read_csv(paths["duplicates"])
    assert {"group_id", "split", "label", "path", "distance", "method"} <= set(duplicates.columns)
    assert len(duplicates) == len(cheap.duplicates)
    quality = pd.read_csv(paths["quality"])
    assert (quality["flags"].fillna("") != "").all()  # only flagged images: usable as data.exclude
    assert {"dark", "dark_score", "blurry", "blurry_score"} <= set(quality.columns)
    summary = json.loads(paths["json"].read_text())
    assert summary["counts"]["leaked_images"] == len(cheap.leakage) > 0
    assert summary["counts"]["found"] == len(planted.samples)
    exclude = set(pd.read_csv(paths["suggested_exclude"])["path"])
    assert set(leaked_paths(cheap)) <= exclude and planted.conflicting - exclude <= set(cheap.duplicates["path"])
    markdown = paths["markdown"].read_text()
    assert f"data.exclude={out}/suggested_exclude.csv" in markdown
    balance = pd.read_csv(paths["class_balance"])
    assert balance["total"].sum() == cheap.counts()["audited"]


def test_gallery_views(planted, cheap):
    groups = duplicate_groups(cheap)
    assert [len(g.paths) for g in groups] == sorted((len(g.paths) for g in groups), reverse=True)
    for group in groups:
        kept = cheap.duplicates.set_index("path").loc[group.paths[0], "keep"]
        assert kept
        order = {"train": 0, "val": 1, "test": 2}
        assert order[group.splits[0]] == min(order[s] for s in group.splits)
    dark = quality_outliers(cheap, "dark")
    assert dark["score"].is_monotonic_increasing and set(planted.quality["dark"]) <= set(dark["path"])
    grid = class_samples(cheap, per_class=3)
    assert sorted(grid) == sorted({s.label for s in planted.samples}) and all(len(v) == 3 for v in grid.values())


def test_fail_on_check(cheap):
    assert fail_on_check(cheap, ["grayscale"]) is not None
    message = fail_on_check(cheap, ["leakage", "unreadable"], show=2)
    assert "leakage:" in message and "unreadable" not in message and "... and" in message
    with pytest.raises(ValueError, match=r"audit\.fail_on"):
        fail_on_check(cheap, ["leaks"])


def test_bad_input_messages(tmp_path, planted):
    with pytest.raises(DataError, match="no images"):
        run_audit([])
    with pytest.raises(DataError, match="needs embeddings"):
        run_audit(planted.samples[:3], mode="full")
    one = run_audit(planted.samples[:1], executor="thread")
    assert any("one class" in n for n in one.notes) and any("only one readable image" in n for n in one.notes)
    assert one.duplicates.empty and one.counts()["audited"] == 1


def test_builtin_digits_cheap_mode(tmp_path):
    """The fit-start audit on the 5,000 built-in digits: fast, and no image is a quality outlier."""
    from datamodules.sources import builtin_digits, folder_samples

    samples = folder_samples(builtin_digits(tmp_path / "mnist")).samples
    findings = run_audit(samples)
    assert findings.counts()["audited"] == 5000
    assert sum(findings.seconds.values()) < 10  # about 1.2 s on 2 cores
    assert findings.counts()["images_with_any_quality_flag"] <= 50
    # Digits are alike at low frequencies, so the hash threshold tightens and few pairs remain.
    assert findings.settings["phash_bits"] <= 2 and len(findings.pairs) < 100
    # A 1 and a 7 written with one slanted stroke share a hash and a colour layout, not a
    # structure: no pair of the built-in digits is a "conflicting label".
    assert findings.counts()["conflicting_label_groups"] == 0


def test_the_structure_thumbnail_vetoes_different_pictures_that_share_a_hash(tmp_path):
    from datamodules.sources import builtin_digits

    root = builtin_digits(tmp_path / "mnist")
    pair = (("1", "mnist_0859.png"), ("7", "mnist_3832.png"))
    one, seven = (read_rgb(str(root / label / name)) for label, name in pair)
    phashes = np.array([perceptual_hash(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)) for x in (one, seven)], dtype=np.uint64)
    thumbnails = np.stack([colour_thumbnail(one), colour_thumbnail(seven)])
    assert len(hash_pairs(phashes, np.arange(2), 1)) == 1  # the hash alone matches them
    assert structure_correlation(thumbnails, np.array([0]), np.array([1]))[0] < STRUCTURE_MIN_CORRELATION
    assert hash_pairs(phashes, np.arange(2), 1, thumbnails=thumbnails).empty


def test_a_recoloured_copy_is_not_a_hash_duplicate(planted, tmp_path):
    """Same luma structure, other colours (a product in each of its colours): the colour thumbnail vetoes the hash."""
    colourful = max(planted.clean, key=lambda p: image_properties(read_rgb(p))["chroma"])
    source = read_rgb(colourful)
    recoloured = tmp_path / "recoloured.png"
    cv2.imwrite(str(recoloured), source[..., [1, 0, 2]])  # written as BGR: red -> green -> blue -> red
    jpeg = tmp_path / "jpeg.jpg"
    cv2.imwrite(str(jpeg), source[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 60])
    samples = [*planted.samples[:88], Sample(str(recoloured), "x", "train"), Sample(str(jpeg), "x", "train")]
    grouped = set(run_audit(samples).duplicates["path"])
    assert str(jpeg) in grouped and str(recoloured) not in grouped
    hashes = [perceptual_hash(cv2.cvtColor(read_rgb(p), cv2.COLOR_RGB2GRAY)) for p in (colourful, recoloured)]
    assert bin(hashes[0] ^ hashes[1]).count("1") <= 10  # the hash alone would have matched them


def test_process_pool_matches_threads_and_reports_progress(planted):
    from data_audit.fingerprints import fingerprint_paths

    paths = [s.path for s in planted.samples]
    calls = []
    threads = fingerprint_paths(
        paths, executor="thread", chunk_size=32, progress=lambda done, total: calls.append(done)
    )
    processes = fingerprint_paths(paths, executor="process", workers=2, chunk_size=32)
    assert processes.executor == "process"
    assert np.array_equal(threads.digests, processes.digests) and np.array_equal(threads.phashes, processes.phashes)
    assert np.allclose(threads.properties, processes.properties)
    assert calls == sorted(calls) and calls[-1] == len(paths) and len(calls) == -(-len(paths) // 32)


def test_class_balance_counts_and_majority_accuracy():
    from data_audit import class_balance

    labels = ["cat"] * 6 + ["dog"] * 2 + ["cat", "dog", "dog", "dog"]
    splits = ["train"] * 8 + ["val"] * 4
    table, summary = class_balance(pd.DataFrame({"label": labels, "split": splits}))
    assert table.set_index("label").loc["cat", ["train", "val", "total"]].tolist() == [6, 1, 7]
    assert summary.imbalance_ratio == 3.0 and summary.majority_class == "cat"
    assert summary.majority_accuracy == {"train": 0.75, "val": 0.25}


def test_nothing_readable_is_reported_not_raised(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    findings = run_audit([Sample(str(broken), "a", "train"), Sample(str(tmp_path / "gone.png"), "b", "val")])
    assert findings.counts()["unreadable"] == 2 and findings.counts()["audited"] == 0
    markdown = write_audit(findings, tmp_path / "audit")["markdown"].read_text()
    assert "No image could be read" in markdown and "2 unreadable" in markdown


def test_the_next_command_never_drops_the_users_own_exclusions(cheap):
    from data_audit import next_step

    advice, command = next_step(cheap, "/r", "python train.py data=folder data.root=/d")
    assert command == "python train.py data=folder data.root=/d data.exclude=/r/suggested_exclude.csv"
    # Hydra keeps only the last data.exclude: a second one would silently bring the user's list back.
    advice, command = next_step(cheap, "/r", "python train.py data=folder data.root=/d data.exclude=/d/bad.csv")
    assert command is None and "add the rows of /r/suggested_exclude.csv to it" in advice


def test_the_approximate_embedding_search_gives_the_same_pairs_every_run():
    from data_audit.near_duplicates import embedding_pairs

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3000, 64)).astype(np.float32)
    x[1500:1600] = x[:100] + 0.01 * rng.standard_normal((100, 64)).astype(np.float32)  # 100 planted twins
    first = embedding_pairs(x, np.arange(3000), exact_limit=1000)  # above the limit: the HNSW graph
    assert len(first) == 100 and first.equals(embedding_pairs(x, np.arange(3000), exact_limit=1000))
