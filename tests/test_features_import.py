"""``cmimh import``: DCMH / DJSRH / UCCH / split-style / our feature files, on tiny hand-made fixtures."""

import hashlib
import json

import h5py
import numpy as np
import pytest
import scipy.io as sio
import scipy.sparse

from pipeline.cli import main
from pipeline.errors import PipelineError
from pipeline.stages import extract
from pipeline.features.importers import choose_splits, load_feature_file
from pipeline.features.store import read_features

from conftest import make_features_h5

N = 6
# Row i is recognisable by its values: image[i] = 10 i + (0, 1, 2), text[i] = 100 i + (0..3).
IMAGE = np.array([[10 * i + j for j in range(3)] for i in range(N)], dtype=np.float64)
TEXT = np.array([[100 * i + j for j in range(4)] for i in range(N)], dtype=np.float64)
LABELS = np.array([[1, 0], [0, 1], [1, 1], [1, 0], [0, 1], [1, 0]], dtype=np.uint8)


def write_v73(path, arrays, structs=None, header=True):
    """As MATLAB ``save -v7.3`` writes: HDF5 after a 512-byte user block with the MAT header, every
    matrix column-major (h5py sees an n x d matrix as d x n), a ``MATLAB_class`` attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for k, a in arrays.items():
            f.create_dataset(k, data=np.asarray(a).T).attrs["MATLAB_class"] = np.bytes_("double")
        for name, fields in (structs or {}).items():
            g = f.create_group(name)
            g.attrs["MATLAB_class"] = np.bytes_("struct")
            for k, a in fields.items():  # a MATLAB 1 x k row vector: h5py sees (k, 1)
                g.create_dataset(k, data=np.atleast_2d(a).T).attrs["MATLAB_class"] = np.bytes_("double")
    if header:
        with open(path, "r+b") as fh:
            fh.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema")
    return path


def settings(**over):
    s = {"dataset": "t", "seed": 0}
    s.update(over)
    return s


# ------------------------------------------------------------------------------------ layouts

def test_dcmh_v5_single_file_with_param_struct_converts_1_based_indices(tmp_path):
    src = tmp_path / "FLICKR-25K.mat"
    param = {"indexQuery": np.array([2, 5]), "indexRetrieval": np.array([1, 3, 4, 6]),
             "indexTrain": np.array([3, 6])}
    sio.savemat(src, {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS, "param": param})
    imp = load_feature_file(src)
    np.testing.assert_array_equal(imp.image, IMAGE)
    np.testing.assert_array_equal(imp.text, TEXT)
    np.testing.assert_array_equal(imp.labels, LABELS)
    assert imp.image.dtype == np.float32 and imp.labels.dtype == np.uint8
    # MATLAB 2, 5 -> rows 1, 4; 1 3 4 6 -> 0 2 3 5; 3 6 -> 2 5
    np.testing.assert_array_equal(imp.splits["query"], [1, 4])
    np.testing.assert_array_equal(imp.splits["database"], [0, 2, 3, 5])
    np.testing.assert_array_equal(imp.splits["train"], [2, 5])
    assert imp.source_format == "mat-v5"
    assert imp.keys_used["image"] == f"{src}:XAll" and imp.keys_used["splits"].endswith("param.indexTrain")
    assert "1-based" in imp.split_protocol


def test_three_separate_mat_files_and_features_preferred_over_raw_images(tmp_path):
    # UCCH: mirflickr25k-iall-vgg.mat (XAll), -yall.mat (YAll), -lall.mat (LAll); DJSRH's -iall.mat is raw
    fi, fy, fl = tmp_path / "m-iall-vgg.mat", tmp_path / "m-yall.mat", tmp_path / "m-lall.mat"
    sio.savemat(fi, {"XAll": IMAGE})
    sio.savemat(fy, {"YAll": TEXT})
    sio.savemat(fl, {"LAll": LABELS})
    raw = write_v73(tmp_path / "m-iall.mat", {"IAll": np.zeros((N, 4, 4, 3), np.uint8)})
    imp = load_feature_file([raw, fi, fy, fl])
    np.testing.assert_array_equal(imp.image, IMAGE)
    np.testing.assert_array_equal(imp.text, TEXT)
    np.testing.assert_array_equal(imp.labels, LABELS)
    assert imp.splits is None and imp.source_format == "mat-v5+mat-v7.3"
    assert imp.keys_used == {"image": f"{fi}:XAll", "text": f"{fy}:YAll", "labels": f"{fl}:LAll"}
    # without a feature matrix the raw images are a one-line error saying what to do
    with pytest.raises(PipelineError) as e:
        load_feature_file([raw, fy, fl])
    assert str(e.value) == (f"{raw}: 'IAll' holds raw images (shape (3, 4, 4, 6)); extract features first "
                            "or point image_key at a feature matrix")


def test_matlab_v73_is_read_transposed_with_param_struct(tmp_path):
    src = write_v73(tmp_path / "d.mat", {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS},
                    {"param": {"indexQuery": [6, 1], "indexDatabase": [2, 3, 4, 5], "indexTrain": [4]}})
    with h5py.File(src) as f:
        assert f["XAll"].shape == (3, N)  # what h5py sees
    imp = load_feature_file(src)
    np.testing.assert_array_equal(imp.image, IMAGE)
    np.testing.assert_array_equal(imp.text, TEXT)
    np.testing.assert_array_equal(imp.labels, LABELS)
    np.testing.assert_array_equal(imp.splits["query"], [5, 0])
    np.testing.assert_array_equal(imp.splits["database"], [1, 2, 3, 4])
    np.testing.assert_array_equal(imp.splits["train"], [3])
    assert imp.source_format == "mat-v7.3" and imp.notes == []
    # the MATLAB_class attribute alone (no header) marks a v7.3 file too
    src2 = write_v73(tmp_path / "noheader.mat", {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS}, header=False)
    imp2 = load_feature_file(src2)
    assert imp2.source_format == "mat-v7.3"
    np.testing.assert_array_equal(imp2.image, IMAGE)


def test_orientation_decided_by_the_shared_row_count(tmp_path):
    # v7.3 file whose labels were written row-major (as h5py from Python would): detected by row count
    src = write_v73(tmp_path / "mixed.mat", {"XAll": IMAGE, "YAll": TEXT})
    with h5py.File(src, "a") as f:
        f.create_dataset("LAll", data=LABELS).attrs["MATLAB_class"] = np.bytes_("double")
    imp = load_feature_file(src)
    np.testing.assert_array_equal(imp.labels, LABELS)
    assert any("LAll: read transposed" in n for n in imp.notes)
    # v5 file with the image stored d x n (features in columns)
    src5 = tmp_path / "cols.mat"
    sio.savemat(src5, {"XAll": IMAGE.T, "YAll": TEXT, "LAll": LABELS})
    imp5 = load_feature_file(src5)
    np.testing.assert_array_equal(imp5.image, IMAGE)
    assert imp5.notes == [f"{src5}:XAll: read transposed, 6 rows x 3 columns"]
    # square (n == d): ambiguous, so the format's natural reading wins (v7.3: transposed)
    sq = np.arange(9.0).reshape(3, 3)
    srcsq = write_v73(tmp_path / "sq.mat", {"XAll": sq, "YAll": TEXT[:3], "LAll": LABELS[:3]})
    np.testing.assert_array_equal(load_feature_file(srcsq).image, sq)


def test_split_style_te_db_tr(tmp_path):
    # te = rows 0, 1 of the fixture; db = rows 2..5; tr = db rows 3 and 5 plus one row not in db
    outsider = (np.array([[7.0, 7, 7]]), np.array([[8.0, 8, 8, 8]]), np.array([[1, 1]]))
    src = tmp_path / "mir.mat"
    sio.savemat(src, {"I_te": IMAGE[:2], "T_te": TEXT[:2], "L_te": LABELS[:2],
                      "I_db": IMAGE[2:], "T_db": TEXT[2:], "L_db": LABELS[2:],
                      "I_tr": np.vstack([IMAGE[[5, 3]], outsider[0]]),
                      "T_tr": np.vstack([TEXT[[5, 3]], outsider[1]]),
                      "L_tr": np.vstack([LABELS[[5, 3]], outsider[2]])})
    imp = load_feature_file(src)
    np.testing.assert_array_equal(imp.image, np.vstack([IMAGE, outsider[0]]))
    np.testing.assert_array_equal(imp.text, np.vstack([TEXT, outsider[1]]))
    np.testing.assert_array_equal(imp.labels, np.vstack([LABELS, outsider[2]]))
    np.testing.assert_array_equal(imp.splits["query"], [0, 1])
    np.testing.assert_array_equal(imp.splits["database"], [2, 3, 4, 5])
    np.testing.assert_array_equal(imp.splits["train"], [3, 5, 6])  # found in db (rows 5, 3) + appended 6
    assert imp.ids == ["te:0", "te:1", "db:0", "db:1", "db:2", "db:3", "tr:2"]
    assert "2 rows found in db, 1 not found" in imp.split_protocol


def test_split_style_in_three_v73_files_and_without_db(tmp_path):
    q = write_v73(tmp_path / "mir_query.mat", {"I_te": IMAGE[:2], "T_te": TEXT[:2], "L_te": LABELS[:2]})
    d = write_v73(tmp_path / "mir_database.mat", {"I_db": IMAGE[2:], "T_db": TEXT[2:], "L_db": LABELS[2:]})
    t = write_v73(tmp_path / "mir_train.mat", {"I_tr": IMAGE[[2, 4]], "T_tr": TEXT[[2, 4]], "L_tr": LABELS[[2, 4]]})
    imp = load_feature_file([t, q, d])
    np.testing.assert_array_equal(imp.image, IMAGE)
    np.testing.assert_array_equal(imp.labels, LABELS)
    np.testing.assert_array_equal(imp.splits["train"], [2, 4])
    assert imp.split_protocol == "split-style: query = te, database = db, train = tr (2 rows found in db)"
    # DJSRH's WIKI: only tr and te -> database = train = tr
    w = tmp_path / "wiki.mat"
    sio.savemat(w, {"I_tr": IMAGE[2:], "T_tr": TEXT[2:], "L_tr": LABELS[2:],
                    "I_te": IMAGE[:2], "T_te": TEXT[:2], "L_te": LABELS[:2]})
    wi = load_feature_file(w)
    np.testing.assert_array_equal(wi.image, IMAGE)
    np.testing.assert_array_equal(wi.splits["query"], [0, 1])
    np.testing.assert_array_equal(wi.splits["database"], [2, 3, 4, 5])
    np.testing.assert_array_equal(wi.splits["train"], [2, 3, 4, 5])


def test_ucch_iapr_names_and_a_seeded_training_draw(tmp_path):
    src = tmp_path / "iapr-tc12-rand.mat"
    sio.savemat(src, {"VTest": IMAGE[:2], "YTest": TEXT[:2], "testL": LABELS[:2],
                      "VDatabase": IMAGE[2:], "YDatabase": TEXT[2:], "databaseL": LABELS[2:],
                      "XTest": np.zeros((2, 9)), "XDatabase": np.zeros((4, 9))})
    imp = load_feature_file(src)
    np.testing.assert_array_equal(imp.image, IMAGE)  # deep V* before hand-crafted X*
    assert set(imp.splits) == {"query", "database"}
    splits, protocol = choose_splits(imp, None, 3, seed=4)
    np.testing.assert_array_equal(splits["query"], [0, 1])
    np.testing.assert_array_equal(splits["database"], [2, 3, 4, 5])
    assert len(splits["train"]) == 3 and set(splits["train"]) <= {2, 3, 4, 5}
    assert np.all(np.diff(splits["train"]) > 0) and "3 drawn from the database (seed 4)" in protocol
    np.testing.assert_array_equal(choose_splits(imp, None, 3, seed=4)[0]["train"], splits["train"])
    with pytest.raises(PipelineError, match="no training split: set n_train"):
        choose_splits(imp, None, None, seed=4)


def test_our_npz_and_h5(tmp_path):
    src = tmp_path / "mine.npz"
    np.savez(src, image=IMAGE, text=TEXT, labels=LABELS, query=np.array([0, 5]),
             database=np.array([1, 2, 3, 4]), train=np.array([1, 3]), ids=np.array(list("abcdef")))
    imp = load_feature_file(src)
    np.testing.assert_array_equal(imp.image, IMAGE)
    np.testing.assert_array_equal(imp.splits["query"], [0, 5])  # 0-based: kept as is
    np.testing.assert_array_equal(imp.splits["train"], [1, 3])
    assert imp.ids == list("abcdef") and imp.source_format == "npz"
    h5 = make_features_h5(tmp_path / "mine.h5", n=60, splits=True)
    imp2 = load_feature_file(h5)
    with h5py.File(h5) as f:
        np.testing.assert_array_equal(imp2.image, f["image"][()])
        np.testing.assert_array_equal(imp2.labels, f["labels"][()])
    np.testing.assert_array_equal(imp2.splits["database"], np.arange(10, 60))
    assert imp2.source_format == "hdf5" and imp2.ids is None


def test_explicit_keys_override_detection(tmp_path):
    src = tmp_path / "odd.mat"
    sio.savemat(src, {"feat_img": IMAGE, "bow": TEXT, "gt": LABELS, "XAll": np.zeros((N, 2))})
    imp = load_feature_file(src, image_key="feat_img", text_key="bow", label_key="gt")
    np.testing.assert_array_equal(imp.image, IMAGE)
    np.testing.assert_array_equal(imp.text, TEXT)
    # a split-style prefix
    src2 = tmp_path / "pre.mat"
    sio.savemat(src2, {"F_te": IMAGE[:2], "F_db": IMAGE[2:], "T_te": TEXT[:2], "T_db": TEXT[2:],
                       "L_te": LABELS[:2], "L_db": LABELS[2:]})
    np.testing.assert_array_equal(load_feature_file(src2, image_key="F").image, IMAGE)
    with pytest.raises(PipelineError) as e:
        load_feature_file(src, image_key="nope")
    assert str(e.value) == f"{src}: no variable 'nope' (image_key); keys found: XAll, bow, feat_img, gt"


def test_labels_class_vector_becomes_one_hot_and_sparse_text_is_densified(tmp_path):
    src = tmp_path / "single.mat"
    classes = np.array([3, 1, 3, 7, 1, 1])  # MATLAB saves a 1 x 6 row vector
    sio.savemat(src, {"XAll": IMAGE, "YAll": scipy.sparse.csc_matrix(TEXT), "LAll": classes})
    imp = load_feature_file(src)
    # columns = sorted class values 1, 3, 7
    np.testing.assert_array_equal(imp.labels, [[0, 1, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(imp.text, TEXT)
    assert any("one-hot over 3 classes" in n for n in imp.notes)


def test_v73_sparse_matrix(tmp_path):
    # MATLAB v7.3 sparse: a group with data, ir (row indices), jc (column pointers) of the m x n matrix
    y = np.array([[0, 2.0], [0, 0], [5, 0]])  # 3 pairs x 2 tags
    csc = scipy.sparse.csc_matrix(y)
    src = write_v73(tmp_path / "sp.mat", {"XAll": IMAGE[:3], "LAll": LABELS[:3]})
    with h5py.File(src, "a") as f:
        g = f.create_group("YAll")
        g.attrs["MATLAB_class"] = np.bytes_("double")
        g.attrs["MATLAB_sparse"] = np.uint64(3)
        g["data"], g["ir"], g["jc"] = csc.data, csc.indices.astype(np.uint64), csc.indptr.astype(np.uint64)
    np.testing.assert_array_equal(load_feature_file(src).text, y)


# ------------------------------------------------------------------------------------- errors

def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(PipelineError) as e:
        fn(*args, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_error_messages_name_the_file_and_the_key(tmp_path):
    src = tmp_path / "a.mat"
    sio.savemat(src, {"XAll": IMAGE, "foo": TEXT})
    assert one_line_error(load_feature_file, src) == (
        f"{src}: no text matrix (looked for text, YAll and split-style I_te/T_te/L_te...); keys found: XAll, foo; "
        "name it with import_keys.text (--text-key)")
    # row counts differ: no single number of pairs either way
    bad = tmp_path / "rows.mat"
    sio.savemat(bad, {"XAll": IMAGE, "YAll": TEXT[:5], "LAll": LABELS})
    msg = one_line_error(load_feature_file, bad)
    assert msg.startswith("row counts differ:") and f"text {bad}:YAll (5, 4)" in msg
    # NaN rows
    nan = IMAGE.copy()
    nan[4, 1] = np.nan
    sio.savemat(tmp_path / "nan.mat", {"XAll": nan, "YAll": TEXT, "LAll": LABELS})
    assert one_line_error(load_feature_file, tmp_path / "nan.mat") == (
        f"{tmp_path / 'nan.mat'}: 'XAll' has NaN/inf in 1 rows (first row 4)")
    # wrong dims
    sio.savemat(tmp_path / "3d.mat", {"XAll": np.zeros((N, 2, 2)), "YAll": TEXT, "LAll": LABELS})
    assert one_line_error(load_feature_file, tmp_path / "3d.mat") == (
        f"{tmp_path / '3d.mat'}: 'XAll' (image) must be a 2-D matrix (pairs x features), got shape (6, 2, 2)")
    # non-binary labels
    sio.savemat(tmp_path / "lab.mat", {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS.astype(np.int8) * 2 - 1})
    assert "labels must be 0/1 multi-hot, found [-1]" in one_line_error(load_feature_file, tmp_path / "lab.mat")
    # param with 0-based indices in a MATLAB file, and out of range
    for idx, needle in (([0, 1], "index 0 < 1, but MATLAB indices start at 1"), ([2, 7], "indices outside 1..6")):
        p = tmp_path / f"param{idx[0]}.mat"
        sio.savemat(p, {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS, "param": {"indexQuery": np.array(idx)}})
        assert one_line_error(load_feature_file, p) == f"{p}:param.indexQuery: {needle}" + (
            " (6 pairs)" if idx[0] == 2 else "")
    # not a known format, and a missing file
    (tmp_path / "junk.mat").write_text("not a mat file at all " * 10)
    assert one_line_error(load_feature_file, tmp_path / "junk.mat").startswith(
        f"{tmp_path / 'junk.mat'}: not a MATLAB (.mat), HDF5 (.h5) or NumPy (.npz) file")
    assert one_line_error(load_feature_file, tmp_path / "none.mat") == f"missing features file: {tmp_path / 'none.mat'}"


# ---------------------------------------------------------------------------- run_import / CLI

def test_run_import_writes_features_with_provenance(tmp_path):
    src = tmp_path / "FLICKR-25K.mat"
    sio.savemat(src, {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS,
                      "param": {"indexQuery": np.array([2, 5]), "indexRetrieval": np.array([1, 3, 4, 6]),
                                "indexTrain": np.array([3, 6])}})
    out = tmp_path / "features.h5"
    extract.run_import(src, settings(), out)
    f = read_features(out)
    np.testing.assert_array_equal(f.image, IMAGE)
    np.testing.assert_array_equal(f.query, [1, 4])
    np.testing.assert_array_equal(f.train, [2, 5])
    prov = json.loads(f.attrs["provenance"])
    assert prov["sources"] == [{"path": str(src.resolve()), "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]
    assert prov["source_format"] == "mat-v5" and prov["keys_used"]["labels"] == f"{src}:LAll"
    assert "1-based" in prov["split_protocol"] and prov["counts"] == {"query": 2, "database": 4, "train": 2}
    # no split in the file and no n_query: a clear error, no output
    sio.savemat(tmp_path / "nosplit.mat", {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS})
    with pytest.raises(PipelineError, match="no query/database/train split: set n_query and n_train"):
        extract.run_import(tmp_path / "nosplit.mat", settings(n_train=3), tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()
    # import_keys from the settings
    sio.savemat(tmp_path / "odd.mat", {"a": IMAGE, "b": TEXT, "c": LABELS})
    extract.run_import(tmp_path / "odd.mat", settings(n_query=2, n_train=3,
                                                      import_keys={"image": "a", "text": "b", "labels": "c"}),
                       tmp_path / "o.h5")
    g = read_features(tmp_path / "o.h5")
    assert len(g.query) == 2 and len(g.train) == 3
    assert json.loads(g.attrs["provenance"])["split_protocol"] == "seeded"


def test_cli_import_several_files_and_one_line_errors(tmp_path, capsys):
    fi, fy, fl = tmp_path / "i.mat", tmp_path / "y.mat", tmp_path / "l.mat"
    sio.savemat(fi, {"XAll": IMAGE})
    sio.savemat(fy, {"YAll": TEXT})
    sio.savemat(fl, {"LAll": LABELS})
    out = tmp_path / "features.h5"
    assert main(["import", str(fi), str(fy), str(fl), "-o", str(out), "--n-query", "2", "--n-train", "3",
                 "--seed", "5"]) == 0
    f = read_features(out)
    np.testing.assert_array_equal(f.labels, LABELS)
    assert len(f.query) == 2 and len(f.database) == 4 and len(f.train) == 3
    assert json.loads(f.attrs["provenance"])["seed"] == 5
    capsys.readouterr()
    assert main(["import", str(fi), str(fy), "-o", str(tmp_path / "x.h5"), "--n-query", "2", "--n-train", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cmimh: error: ") and "no labels matrix" in err and "\n" not in err


def test_config_schema_accepts_import_keys():
    from pipeline.config import REPO_ROOT, check_structure, load_config
    from pipeline.stages import IMPORT_KEYS, resolve

    cfg = load_config(REPO_ROOT / "config.yaml")
    cfg["datasets"]["mine"] = {"source": "features", "path": "x.mat", "import_keys": {"image": "XAll"}}
    cfg["dataset"] = "mine"
    check_structure(cfg, check_files=False)
    assert resolve(cfg, "mine", "import_features")["import_keys"] == {"image": "XAll"}
    assert "import_keys" in IMPORT_KEYS
    cfg["datasets"]["mine"]["import_keys"] = {"imgae": "XAll"}
    with pytest.raises(PipelineError, match="import_keys"):
        check_structure(cfg, check_files=False)


@pytest.mark.parametrize("fmt", ["5", "4"])
def test_a_truncated_mat_file_is_refused_not_read_without_its_last_variables(tmp_path, fmt):
    """scipy stops quietly at a cut-off element: the copy read as a file without its split struct
    (a seeded split instead of the authors') or without its labels."""
    src = tmp_path / "full.mat"
    arrays = {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS.astype(np.float64)}
    if fmt == "5":
        arrays["param"] = {"indexQuery": np.array([1, 2]), "indexRetrieval": np.arange(3, 7)}
    sio.savemat(src, arrays, format=fmt)
    load_feature_file(src)  # whole: reads
    cut = tmp_path / "cut.mat"
    cut.write_bytes(src.read_bytes()[:-40])
    msg = one_line_error(load_feature_file, cut)
    assert msg.startswith(f"{cut}: truncated MATLAB file (cut off at byte ") and msg.endswith("copy it again"), msg


def test_damaged_compressed_data_and_folders_are_one_line(tmp_path):
    mat = tmp_path / "z.mat"
    sio.savemat(mat, {"XAll": IMAGE, "YAll": TEXT, "LAll": LABELS.astype(np.float64)}, do_compression=True)
    b = bytearray(mat.read_bytes())
    b[150:160] = b"\0" * 10  # inside the first compressed element
    mat.write_bytes(bytes(b))
    assert one_line_error(load_feature_file, mat).startswith(f"{mat}: damaged MATLAB file")
    npz = tmp_path / "f.npz"
    np.savez(npz, image=IMAGE, text=TEXT, labels=LABELS)
    b = bytearray(npz.read_bytes())
    b[200:260] = b"\0" * 60  # inside image.npy: a bad CRC on reading it
    npz.write_bytes(bytes(b))
    assert one_line_error(load_feature_file, npz).startswith(f"{npz}:image: damaged data, cannot be read (BadZipFile")
    short = tmp_path / "short.npz"
    np.savez(short, image=IMAGE, text=TEXT, labels=LABELS)
    short.write_bytes(short.read_bytes()[:300])  # no central directory: still named as an .npz
    assert one_line_error(load_feature_file, short).startswith(f"{short}: not a readable .npz file, damaged or truncated")
    (tmp_path / "folder.h5").mkdir()
    assert one_line_error(load_feature_file, tmp_path / "folder.h5") == (
        f"features file {tmp_path / 'folder.h5'} is a directory, not a .mat/.h5/.npz file")


def test_run_import_under_a_protocol_draws_the_protocol_split_or_keeps_the_files(tmp_path):
    """A features file under a protocol (data set NAME@ldr): no split in the file -> the protocol's
    sizes (planned on its rows, shrunk to fit: 60 pairs hold at most 0.2 x 60 = 12 held out:
    1,000 + 1,000 -> 6 + 6); a file with its own split keeps it, noted."""
    import h5py as h5

    src = make_features_h5(tmp_path / "f.h5", n=60)
    proto = {"name": "ldr", "split": {"n_query": 1000, "n_val": 1000, "n_train": "database"}, "shrink": 0.2,
             "notes": []}
    out = tmp_path / "features.h5"
    extract.run_import(src, settings(protocol=proto), out)
    f = read_features(out)
    assert (len(f.query), len(f.database), len(f.train)) == (6, 48, 48)
    with h5.File(out, "r") as g:
        assert len(g["validation"]) == 6
        prov = json.loads(g.attrs["provenance"])
    assert prov["protocol"]["sizes"] == {"n_query": 6, "n_val": 6, "n_train": 48}
    assert "shrunk to 6 + 6" in prov["protocol"]["notes"][0]
    src2 = make_features_h5(tmp_path / "g.h5", n=60, splits=True)
    extract.run_import(src2, settings(protocol=proto), tmp_path / "o2.h5")
    g2 = read_features(tmp_path / "o2.h5")
    assert list(g2.query) == list(range(10))
    assert "its own split: kept" in json.loads(g2.attrs["provenance"])["protocol"]["notes"][0]
