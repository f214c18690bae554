"""codes.h5 contract: bit packing and every validation error of read_codes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.eval.codes import pack_bits, read_codes, unpack_bits, write_codes


def _arrays(bits: int = 13, nq: int = 3, ndb: int = 5, c: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(
        query_image=rng.integers(0, 2, (nq, bits)), query_text=rng.integers(0, 2, (nq, bits)),
        db_image=rng.integers(0, 2, (ndb, bits)), db_text=rng.integers(0, 2, (ndb, bits)),
        query_labels=rng.integers(0, 2, (nq, c)), db_labels=rng.integers(0, 2, (ndb, c)), bits=bits,
    )


def test_pack_unpack_round_trip_non_multiple_of_8():
    x = np.random.default_rng(1).integers(0, 2, (7, 13)).astype(np.uint8)
    p = pack_bits(x)
    assert p.dtype == np.uint8 and p.shape == (7, 2)
    np.testing.assert_array_equal(p, np.packbits(x, axis=1))  # the contract: default bit order
    np.testing.assert_array_equal(unpack_bits(p, 13), x)


def test_pack_bits_rejects_non_binary():
    with pytest.raises(PipelineError, match="0/1"):
        pack_bits(np.array([[0, 2, 1]]))


def test_write_read_round_trip(tmp_path):
    a = _arrays()
    path = tmp_path / "codes.h5"
    write_codes(path, **a, attrs={"provenance": {"stage": "test"}, "note": "x"},
                query_ids=["q0", "q1", "q2"], db_ids=[f"d{i}" for i in range(5)])
    c = read_codes(path)
    assert c.bits == 13 and c.width == 2 and c.n_query == 3 and c.n_db == 5
    for name in ("query_image", "query_text", "db_image", "db_text"):
        np.testing.assert_array_equal(unpack_bits(getattr(c, name), 13), a[name])
    np.testing.assert_array_equal(c.db_labels, a["db_labels"])
    assert list(c.query_ids) == ["q0", "q1", "q2"] and c.db_ids[4] == "d4"
    assert c.attrs["note"] == "x" and '"stage": "test"' in c.attrs["provenance"]
    assert not list(tmp_path.glob(".*"))  # no temporary left behind


def test_write_codes_rejects_wrong_shape(tmp_path):
    a = _arrays()
    a["db_text"] = a["db_text"][:, :12]
    with pytest.raises(PipelineError, match="db_text"):
        write_codes(tmp_path / "c.h5", **a)
    assert not (tmp_path / "c.h5").exists()


def _write_raw(path, **overrides):
    """A valid packed file, with datasets replaced (or removed with None) and attrs overridden."""
    a = _arrays()
    data = {k: pack_bits(a[k]) for k in ("query_image", "query_text", "db_image", "db_text")}
    data.update(query_labels=a["query_labels"].astype(np.uint8), db_labels=a["db_labels"].astype(np.uint8))
    attrs = {"bits": 13}
    for k, v in overrides.items():
        if k == "attrs":
            attrs = v
        else:
            data[k] = v
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            if v is not None:
                f.create_dataset(k, data=v)
        for k, v in attrs.items():
            f.attrs[k] = v
    return path


@pytest.mark.parametrize("overrides, message", [
    ({"db_text": None}, "missing dataset 'db_text'"),
    ({"db_image": np.zeros((5, 3), np.uint8)}, "different byte widths"),
    ({"query_labels": np.zeros((2, 4), np.uint8)}, "query_labels has 2 rows but query codes have 3"),
    ({"db_labels": np.zeros((5, 6), np.uint8)}, "query_labels has 4 classes but db_labels has 6"),
    ({"db_image": np.zeros((0, 2), np.uint8), "db_text": np.zeros((0, 2), np.uint8),
      "db_labels": np.zeros((0, 4), np.uint8)}, "empty database"),
    ({"query_image": np.zeros((0, 2), np.uint8), "query_text": np.zeros((0, 2), np.uint8),
      "query_labels": np.zeros((0, 4), np.uint8)}, "empty query set"),
    ({"db_labels": np.full((5, 4), 2, np.uint8)}, "db_labels must be 0/1"),
    ({"query_text": np.zeros((4, 2), np.uint8)}, "query_image has 3 rows but query_text has 4"),
    ({"db_text": np.zeros((5, 2), np.float32)}, "packed codes"),
    ({"attrs": {"bits": 20}}, "bits=20 does not fit codes of 2 bytes"),
    ({"query_image": np.full((3, 2), 255, np.uint8)}, "non-zero padding bits"),
])
def test_read_codes_errors(tmp_path, overrides, message):
    path = _write_raw(tmp_path / "bad.h5", **overrides)
    with pytest.raises(PipelineError) as e:
        read_codes(path)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_read_codes_missing_and_not_hdf5(tmp_path):
    with pytest.raises(PipelineError, match="missing codes file"):
        read_codes(tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(PipelineError, match="not a readable HDF5 file"):
        read_codes(junk)


def test_bits_inferred_when_attribute_absent(tmp_path):
    path = _write_raw(tmp_path / "c.h5", attrs={})
    assert read_codes(path).bits == 16


def test_write_codes_rejects_bad_labels_naming_the_file(tmp_path):
    a = _arrays()
    a["db_labels"] = a["db_labels"] * 3
    with pytest.raises(PipelineError) as e:
        write_codes(tmp_path / "c.h5", **a)
    assert str(e.value).startswith(str(tmp_path / "c.h5")) and "db_labels must be 0/1" in str(e.value)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bits_attr", [None, 256])
def test_unpacked_01_codes_are_refused(tmp_path, bits_attr):
    """One byte per bit (np.uint8 0/1) must not be read as 8x longer packed codes."""
    rng = np.random.default_rng(3)
    path = tmp_path / "codes.h5"
    with h5py.File(path, "w") as f:
        for name, n in (("query_image", 4), ("query_text", 4), ("db_image", 9), ("db_text", 9)):
            f[name] = rng.integers(0, 2, (n, 32)).astype(np.uint8)
        f["query_labels"] = np.eye(4, 3, dtype=np.uint8)
        f["db_labels"] = np.ones((9, 3), np.uint8)
        if bits_attr:
            f.attrs["bits"] = bits_attr
    with pytest.raises(PipelineError, match="look like unpacked 0/1 codes"):
        read_codes(path)


def test_all_zero_codes_of_a_collapsed_model_are_still_read(tmp_path):
    a = _arrays(bits=32)
    for name in ("query_image", "query_text", "db_image", "db_text"):
        a[name] = np.zeros_like(a[name])
    write_codes(tmp_path / "c.h5", **a)
    assert read_codes(tmp_path / "c.h5").bits == 32


def test_real_valued_embeddings_round_trip_and_are_checked(tmp_path):
    a = _arrays()
    rng = np.random.default_rng(0)
    real = {n: rng.normal(size=(len(a[n]), 5)).astype(np.float32) for n in ("query_image", "query_text", "db_image", "db_text")}
    write_codes(tmp_path / "c.h5", **a, real=real)
    c = read_codes(tmp_path / "c.h5")
    assert all(np.array_equal(c.real[n], real[n]) for n in real)
    assert read_codes(_write_raw(tmp_path / "plain.h5")).real is None
    real["db_text"] = real["db_text"][:2]
    with pytest.raises(PipelineError, match="real-valued db_text"):
        write_codes(tmp_path / "d.h5", **a, real=real)
