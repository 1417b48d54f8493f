"""Subject-level splits and subject ids."""

from __future__ import annotations

from collections import Counter

import pytest

from medgen_cli.preprocess import splits as P


def test_splits_disjoint_deterministic_order_independent():
    subjects = [f"sub-{i:03d}" for i in range(50)]
    a = P.assign_splits(subjects, seed=3)
    b = P.assign_splits(list(reversed(subjects)) + subjects[:10], seed=3)  # order, duplicates
    assert a == b
    assert set(a) == set(subjects)  # a dict: each subject in exactly one split
    assert Counter(a.values()) == {"train": 40, "val": 5, "test": 5}
    assert P.assign_splits(subjects, seed=4) != a


@pytest.mark.parametrize(
    "n,fractions,expected",
    [
        (100, (0.8, 0.1, 0.1), (80, 10, 10)),
        (7, (0.8, 0.1, 0.1), (5, 1, 1)),  # 5.6/0.7/0.7 -> 5/0/0 + remainders 1/1/0 -> then >= 1 each
        (10, (0.7, 0.3, 0.0), (7, 3, 0)),
        (3, (0.8, 0.1, 0.1), (1, 1, 1)),
        (2, (0.8, 0.1, 0.1), (1, 1, 0)),  # fewer subjects than splits: train first
        (1, (0.8, 0.1, 0.1), (1, 0, 0)),
        (11, (0.5, 0.25, 0.25), (5, 3, 3)),
    ],
)
def test_split_counts(n, fractions, expected):
    got = Counter(P.assign_splits([str(i) for i in range(n)], fractions).values())
    assert tuple(got.get(k, 0) for k in ("train", "val", "test")) == expected


def test_split_bad_parameters():
    with pytest.raises(ValueError, match="sum to 1"):
        P.assign_splits(["a"], (0.5, 0.2, 0.1))
    with pytest.raises(ValueError, match="one fraction per split"):
        P.assign_splits(["a"], (0.5, 0.5))
    with pytest.raises(ValueError, match="unique"):
        P.assign_splits(["a"], (0.5, 0.5), names=("x", "x"))
    assert P.assign_splits([]) == {}


def test_subject_from_path():
    assert P.subject_from_path("/data/sub-01.nii.gz") == "sub-01"
    assert P.subject_from_path("scans/PAT7_ct.NRRD") == "PAT7_ct"
    assert P.subject_from_path("/dicom/series_12/") == "series_12"
    assert P.subject_from_path("a/b.v2.mha") == "b.v2"
    assert P.subject_from_path("/data/sub-07/ses-1/ct.nii.gz", r"(sub-\d+)") == "sub-07"
    assert P.subject_from_path("/x/case12_t1.png", r"case(?P<subject>\d+)_") == "12"
    assert P.subject_from_path("/x/ID99.png", r"ID\d+") == "ID99"
    with pytest.raises(ValueError, match="does not match"):
        P.subject_from_path("/x/y.nii", r"sub-\d+")
    with pytest.raises(ValueError, match="regular expression"):
        P.subject_from_path("/x/y.nii", r"(")


def test_load_subject_csv(tmp_path):
    f = tmp_path / "subjects.csv"
    f.write_text("path, subject,site\nimgs/a.nii.gz,P1,x\nimgs/b.nii.gz,P1,y\nc,P2,z\n")
    assert P.load_subject_csv(f).subjects == {"imgs/a.nii.gz": "P1", "imgs/b.nii.gz": "P1", "c": "P2"}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,subject\na,b\n")
    with pytest.raises(ValueError, match="'path' and 'subject'"):
        P.load_subject_csv(bad)
    clash = tmp_path / "clash.csv"
    clash.write_text("path,subject\na,P1\na,P2\n")
    with pytest.raises(ValueError, match="two subjects"):
        P.load_subject_csv(clash)


def test_pinned_subjects_keep_their_split_and_the_rest_follow_the_fractions():
    subjects = [f"s{i:02d}" for i in range(20)]
    got = P.assign_splits(subjects, (0.5, 0.0, 0.5), seed=1, pinned={"s03": "test", "s07": "train", "other": "val"})
    assert got["s03"] == "test" and got["s07"] == "train"
    assert "other" not in got  # pinned but absent from the inputs
    rest = Counter(v for k, v in got.items() if k not in ("s03", "s07"))
    assert rest == Counter({"train": 9, "test": 9})
    assert P.assign_splits(["a", "b"], (1.0, 0.0, 0.0), pinned={"b": "test"}) == {"a": "train", "b": "test"}
    assert P.assign_splits(["a"], (1.0, 0.0, 0.0), pinned={"a": "val"}) == {"a": "val"}
    with pytest.raises(ValueError, match="not among the split names"):
        P.assign_splits(["a"], pinned={"a": "holdout"})


def test_subject_csv_split_column(tmp_path):
    f = tmp_path / "subjects.csv"
    f.write_text("path,subject,split\na.nrrd,P1,test\nb.nrrd,P1,\nc.nrrd,P2,\nd.nrrd,P3,train\n")
    table = P.load_subject_csv(f)
    assert table.subjects == {"a.nrrd": "P1", "b.nrrd": "P1", "c.nrrd": "P2", "d.nrrd": "P3"}
    assert table.splits == {"P1": "test", "P3": "train"}
    bad = tmp_path / "bad.csv"
    bad.write_text("path,subject,split\na,P1,holdout\n")
    with pytest.raises(ValueError, match="'holdout' is not one of train, val, test"):
        P.load_subject_csv(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("path,subject,split\na,P1,test\nb,P1,train\n")
    with pytest.raises(ValueError, match="pinned to two splits"):
        P.load_subject_csv(twice)


@pytest.mark.parametrize("path, expected", [
    ("/bids/sub-01/anat/sub-01_T1w.nii.gz", {"sub": "sub-01"}),
    ("/bids/sub-03/ses-2/anat/sub-03_ses-2_T1w.nii.gz", {"sub": "sub-03", "ses": "ses-2"}),
    ("/bids/sub-04/ses-pre/anat/T1w.nii.gz", {"sub": "sub-04", "ses": "ses-pre"}),  # from the directories
    ("/bids/sourcedata/sub-05/ses-1/dicom", {"sub": "sub-05", "ses": "ses-1"}),  # a DICOM series directory
    ("/bids/sub-06/ct.nii.gz", {"sub": "sub-06"}),
    ("/data/sub-01.nii.gz", {"sub": "sub-01"}),
    ("/home/sub-admin/data/scans/ct01.nii.gz", {}),  # a sub- directory far above the file is not BIDS
    ("/data/sub-7_x/ct.nii.gz", {}),  # not exactly sub-<label>
    ("/data/mysub-01_T1w.nii.gz", {}),  # an entity starts the name or follows "_"
    ("/data/ct01.nii.gz", {}),
])
def test_bids_entities(path, expected):
    assert P.bids_entities(path) == expected


def test_subject_from_path_follows_bids_and_keeps_sessions_out_of_the_subject():
    assert P.subject_from_path("/bids/sub-03/ses-2/anat/sub-03_ses-2_T1w.nii.gz") == "sub-03"
    assert P.subject_from_path("/bids/sub-04/ses-1/anat/T1w.nii.gz") == "sub-04"
    assert P.subject_from_path("/home/sub-admin/data/scans/ct01.nii.gz") == "ct01"
    assert P.subject_from_path("/home/sub-admin/data/anat/ct01.nii.gz") == "ct01"
    # an explicit pattern wins over the BIDS rule
    assert P.subject_from_path("/bids/sub-03/anat/sub-03_T1w.nii.gz", r"(T1w)") == "T1w"
    assert P.strip_image_suffix("x.NII.GZ") == "x" and P.strip_image_suffix(".nii") == ".nii"


def test_subject_table_matches_a_path_by_spelling_real_path_or_file_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    real = tmp_path / "d" / "b.nii.gz"
    real.write_bytes(b"")
    (tmp_path / "link.nii.gz").symlink_to(real)
    table = P.SubjectTable(subjects={"imgs/a.nii.gz": "A", "d/b.nii.gz": "B", "c": "C", "e.nrrd": "E"})
    assert table.subject_of("imgs/a.nii.gz") == "A"
    assert table.subject_of(str(tmp_path / "link.nii.gz")) == "B"  # the same file as the listed path
    assert table.subject_of("/elsewhere/c.nii.gz") == "C"  # by name without the image extension
    assert table.subject_of("/x/e.nrrd") == "E"
    assert table.subject_of("/x/a.nii.gz") is None


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"path,subject\n\xff\xfe,x\n", "is not UTF-8 text"),
    (b"path,subject\n", "no rows"),
    (b"path,subject,note\n" + b"a,," + b"x" * 5000 + b"\n", r"empty path or subject in \{.{0,80}\.\.\.$"),
])
def test_load_subject_csv_errors_name_the_file_and_stay_short(tmp_path, content, match):
    f = tmp_path / "subjects.csv"
    if content is not None:
        f.write_bytes(content)
    with pytest.raises(ValueError, match=match) as err:
        P.load_subject_csv(f)
    assert "subjects.csv" in str(err.value) and len(str(err.value)) < 300
    if content is None:
        with pytest.raises(ValueError, match="is a directory"):
            P.load_subject_csv(tmp_path)
