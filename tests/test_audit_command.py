"""``python audit.py``: the report files, the TensorBoard panels, ``audit.fail_on``, bad input, and the
audit CSVs handed to the next run as ``data.exclude``. Data: tests/audit_planted.py's photo crops
with planted copies, conflicting copies and quality problems, as a folder of class folders."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from data_audit import FILES, conflict_suggestions, read_audit
from datamodules import Catalogue, DataError
from datamodules.catalogue import summary_counts_add_up
from runs.audit_step import AuditSettings
from runs.errors import ConfigError
from tests.audit_planted import build
from tests.conftest import compose_config, run_cli

PATH_FILES = ("duplicates", "leakage", "conflicting_labels", "quality", "suggested_exclude")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """About 140 photo crops in 8 class folders, with every kind of planted problem."""
    return build(tmp_path_factory.mktemp("photos") / "data", copies_per_kind=3)


def _config(root, run_dir, *extra):
    return compose_config(
        ["data=folder", f"data.root={root}", f"paths.output_dir={run_dir}", "audit.progress=false", *extra], "audit"
    )


@pytest.fixture(scope="module")
def audited(photos, tmp_path_factory):
    from audit import audit

    run_dir = tmp_path_factory.mktemp("audit") / "run"
    root = photos.samples[0].path.rsplit("/", 2)[0]
    findings = audit(_config(root, run_dir))
    return run_dir, findings, root


def test_audit_writes_every_report_and_the_panels(audited):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, findings, _ = audited
    report = run_dir / "reports" / "audit"
    assert {p.name for p in report.iterdir()} == set(FILES.values())
    counts = json.loads((report / "audit.json").read_text())["counts"]
    assert counts["leaked_images"] == len(findings.leakage) > 0
    assert counts["conflicting_label_groups"] > 0 and counts["images_with_any_quality_flag"] > 0
    # The samples the audit read are those training would use, saved like a training run's.
    catalogue = Catalogue.load(run_dir / "catalogue.json")
    assert counts["audited"] == sum(catalogue.used().values())
    markdown = (report / "audit.md").read_text()
    assert f"python train.py data.exclude={report}/suggested_exclude.csv" in markdown

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    images = set(events.Tags()["images"])
    expected = {"audit/look_at_your_data", "audit/duplicate_groups", "audit/leakage", "audit/class_balance"}
    assert expected <= images
    assert {"audit/quality_dark", "audit/quality_blurry", "audit/quality_low_information"} <= images
    for tag in expected:
        image = events.Images(tag)[0]
        assert image.width >= 300 and image.height >= 200, tag
    text = events.Tensors("audit/summary/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| val/test images leaked from an earlier split |" in text


def test_saved_findings_read_back_as_typed_tables(audited):
    run_dir, findings, _ = audited
    tables = read_audit(run_dir / "reports" / "audit")
    assert len(tables.duplicates) == len(findings.duplicates)
    assert tables.duplicates["group_id"].tolist() == findings.duplicates["group_id"].tolist()
    assert (
        tables.duplicates["keep"].dtype == bool
        and tables.duplicates["keep"].sum() == findings.counts()["duplicate_groups"]
    )
    assert tables.leakage["path"].tolist() == findings.leakage["path"].tolist()
    assert tables.quality["dark"].dtype == bool and tables.quality["dark_score"].dtype == float
    assert tables.class_balance["total"].sum() == findings.counts()["audited"]
    assert read_audit(run_dir / "no such folder") is None


@pytest.mark.parametrize("key", PATH_FILES)
def test_data_exclude_takes_each_audit_csv_as_it_is(audited, key):
    run_dir, _, root = audited
    listed = run_dir / "reports" / "audit" / FILES[key]
    paths = set(pd.read_csv(listed, dtype=str, keep_default_na=False)["path"])
    assert paths, key
    catalogue = Catalogue.build(source="folder", root=root, exclude=str(listed))
    assert {e["path"] for e in catalogue.excluded} == paths
    kept = {s.path for group in catalogue.splits.values() for s in group}
    assert not kept & paths and summary_counts_add_up(catalogue.summary)


@pytest.mark.slow
def test_fail_on_exits_1_and_lists_the_files(audited, tmp_path):
    _, findings, root = audited
    result = run_cli(
        [
            "audit.py",
            "data=folder",
            f"data.root={root}",
            f"hydra.run.dir={tmp_path / 'run'}",
            "audit.fail_on=[leakage,conflicting_labels]",
        ],
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: The data audit found what audit.fail_on stops on")
    assert findings.leakage["path"].iloc[0] in result.stderr and "conflicting_labels:" in result.stderr
    assert "run folder" in result.stdout and "val/test images leaked" in result.stdout  # the table came first
    assert (tmp_path / "run" / "reports" / "audit" / "leakage.csv").is_file()


def test_a_single_class_folder_is_audited_unsplit(photos, tmp_path):
    """Training refuses one class; the audit still looks at the images and says what training would do."""
    from audit import audit

    folder = tmp_path / "one" / "cats"
    folder.mkdir(parents=True)
    for sample in photos.samples[:12]:
        shutil.copy(sample.path, folder / sample.path.rsplit("/", 1)[1])
    shutil.copy(photos.samples[0].path, folder / "copy.png")
    (folder / "broken.png").write_bytes(b"")  # listed as unreadable, never a crash
    findings = audit(_config(tmp_path / "one", tmp_path / "run"))
    assert any("training would stop here" in n and "only one class" in n for n in findings.notes)
    assert findings.counts()["unreadable"] == 1 and findings.exclusions["reason"].str.contains("empty").all()
    assert str(folder / "copy.png") in set(findings.duplicates["path"])
    markdown = (tmp_path / "run" / "reports" / "audit" / "audit.md").read_text()
    assert "training would stop here" in markdown


def test_a_single_image_is_audited_with_a_note(photos, tmp_path):
    from audit import audit

    (tmp_path / "one" / "cats").mkdir(parents=True)
    shutil.copy(photos.samples[0].path, tmp_path / "one" / "cats" / "only.png")
    findings = audit(_config(tmp_path / "one", tmp_path / "run"))
    assert findings.counts()["audited"] == 1 and findings.duplicates.empty
    assert any("only one readable image" in n for n in findings.notes)
    assert any("needs at least 2" in n for n in findings.notes)  # why training would refuse it


def test_data_that_cannot_be_listed_stops_with_its_message(tmp_path):
    from audit import audit

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        audit(_config(tmp_path / "empty", tmp_path / "run"))
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(DataError, match="has no image files"):
        audit(_config(tmp_path / "empty", tmp_path / "run3"))
    with pytest.raises(ConfigError, match="switches the audit off"):
        audit(_config(tmp_path / "empty", tmp_path / "run2", "audit=off"))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"fail_on": ["leaks"]}, r"audit.fail_on=\['leaks'\]"),
        ({"mode": "fast"}, "audit.mode='fast'"),
        ({"phash_max_bits": 40}, "audit.phash_max_bits=40"),
        ({"enabled": False, "drop_leaked": True}, "switched off"),
        ({"thresholds": 1}, r"unknown audit option\(s\) \['thresholds'\]"),
        ({"quality": {"dark": 3}}, r"unknown audit.quality option\(s\) \['dark'\]"),
    ],
)
def test_bad_audit_options_name_the_option(values, message):
    with pytest.raises(ConfigError, match=message):
        AuditSettings.from_config(values)


def test_the_audit_group_composes_for_training_with_every_threshold():
    from data_audit import QualityThresholds

    cfg = compose_config(["audit.mode=full", "audit.drop_leaked=true"])
    settings = AuditSettings.from_config(cfg.audit)
    assert settings.mode == "full" and settings.drop_leaked and settings.quality == QualityThresholds()
    assert not AuditSettings.from_config(compose_config(["audit=off"]).audit).enabled


def test_conflict_suggestions_give_each_group_one_label():
    conflicts = pd.DataFrame(
        {
            "group_id": [0, 0, 0, 1, 1],
            "path": ["a", "b", "c", "d", "e"],
            "label": ["cat", "cat", "dog", "cat", "dog"],
        }
    )
    # Group 0: the majority. Group 1: a tie, settled by what the model predicts, else sorted first.
    assert conflict_suggestions(conflicts) == {"a": "cat", "b": "cat", "c": "cat", "d": "cat", "e": "cat"}
    suggested = conflict_suggestions(conflicts, predicted={"d": "dog", "e": "dog", "a": "dog"})
    assert suggested["d"] == suggested["e"] == "dog" and suggested["a"] == "cat"
    assert np.unique(list(conflict_suggestions(conflicts.iloc[3:]).values())).size == 1


def test_full_mode_adds_the_backbone_embedding_search(audited, tmp_path):
    """audit.mode=full embeds every image with model.name's backbone (here a tiny random one, which the
    report says is of little use) and reports what only the embeddings linked."""
    from audit import audit

    _, cheap, root = audited
    overrides = ["audit.mode=full", "model=scratch", "model.name=test_convnext", "data.image_size=32"]
    findings = audit(_config(root, tmp_path / "run", *overrides))
    assert findings.mode == "full" and findings.settings["embedding_min_cosine"] == 0.9
    assert set(cheap.duplicates["path"]) <= set(findings.duplicates["path"])  # the embeddings only add links
    markdown = (tmp_path / "run" / "reports" / "audit" / "audit.md").read_text()
    assert "| - images linked only by embeddings |" in markdown and "random weights" in markdown


def test_one_fail_on_kind_may_be_given_without_brackets():
    assert AuditSettings.from_config({"fail_on": "leakage"}).fail_on == ("leakage",)
    with pytest.raises(ConfigError, match=r"audit.fail_on=\('leaks',\)|audit.fail_on=\['leaks'\]"):
        AuditSettings.from_config({"fail_on": "leaks"})
