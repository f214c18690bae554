"""Read the pre-extracted feature files that cross-modal hashing projects pass around.

Users who already have the MIRFlickr-25K / NUS-WIDE / MS-COCO / IAPR-TC12 files of DCMH
(Jiang & Li, CVPR 2017, github.com/jiangqy/DCMH-CVPR2017), DJSRH (Su, Zhong & Zhang, ICCV 2019,
github.com/zs-zhong/DJSRH), UCCH (Hu et al., TPAMI 2022, github.com/penghu-cs/UCCH) or a
split-style file start at training with them (``cmimh import``). Layouts, tried in this order:

1. *All style* (DCMH, DJSRH, UCCH): image ``XAll`` (features) or ``IAll``/``images``, text
   ``YAll`` (tag bag-of-words), labels ``LAll``, in one file or several (DJSRH and UCCH ship
   ``mirflickr25k-iall.mat``, ``-yall.mat``, ``-lall.mat``, UCCH also ``-iall-vgg.mat`` with
   ``XAll``: pass them all). DCMH's MATLAB demos keep the split in a struct ``param`` with
   ``indexQuery``, ``indexRetrieval`` (``indexDatabase`` for MS-COCO) and ``indexTrain``: 1-based
   MATLAB indices, converted to 0-based here. Top-level variables of those names count too.
2. *Split style*: ``I_te``/``T_te``/``L_te`` (test = queries), ``I_db``/... (database),
   ``I_tr``/... (training), in one file or three (``mir_query.mat``, ``mir_database.mat``,
   ``mir_train.mat``); or UCCH's IAPR-TC12 names ``VTest``/``VDatabase`` (deep image features;
   ``XTest``/``XDatabase``: hand-crafted), ``YTest``/``YDatabase``, ``testL``/``databaseL``.
   Those loaders rank te against db, so the rows become ``[te; db]`` with query = te and
   database = db. Their training rows are a subset of db: each tr row is looked up in db (same
   image, text and labels) and train = those db rows; tr rows not found are appended after db
   (trained on, not searched). Without db (DJSRH's WIKI loader): database = train = tr.
3. *Ours* (``.h5`` or ``.npz``): ``image``, ``text``, ``labels`` (+ 0-based ``query``,
   ``database``, ``train`` and ``ids``).

Formats: MATLAB v4 to v7.2 through ``scipy.io.loadmat``; MATLAB v7.3 (an HDF5 file) and plain
HDF5 through h5py; ``.npz`` through NumPy. MATLAB stores arrays column-major, so h5py sees a v7.3
``n x d`` matrix as ``d x n`` (hence the ``.T`` in those projects' loaders). Each matrix's
orientation is settled by the number of pairs that image, text and labels share: the format's
natural reading (transposed for v7.3, as stored otherwise) when the row counts agree; otherwise
the one row count that all three allow, each read either way (noted in the provenance). A
4-D image array is raw pixels (DJSRH's and DCMH's ``IAll``/``images``), not features.
Explicit keys (``image_key``..., config ``import_keys``) override the detection; for split-style
files a key may name the prefix (``X`` for ``X_tr``/``X_te``/``X_db``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import h5py
import numpy as np

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

ROLES = ("image", "text", "labels")
SPLITS = ("query", "database", "train")
# All-style names, in order of preference: features before raw images.
CANDIDATES = {
    "image": ("image", "XAll", "IAll", "images"),
    "text": ("text", "YAll"),
    "labels": ("labels", "LAll"),
}
# Split-style names: role -> part -> variable; parts te (queries), db (database), tr (training).
PARTS = ("te", "db", "tr")
SPLIT_STYLES: tuple[dict[str, dict[str, str]], ...] = (
    {"image": {p: f"I_{p}" for p in PARTS}, "text": {p: f"T_{p}" for p in PARTS},
     "labels": {p: f"L_{p}" for p in PARTS}},
    *({"image": {"te": f"{x}Test", "db": f"{x}Database", "tr": f"{x}Train"},
       "text": {"te": "YTest", "db": "YDatabase", "tr": "YTrain"},
       "labels": {"te": "testL", "db": "databaseL", "tr": "trainL"}} for x in ("V", "X")),
)
# DCMH's ``param`` struct (or top-level variables): split -> field names, 1-based indices.
PARAM_FIELDS = {"query": ("indexQuery",), "database": ("indexRetrieval", "indexDatabase"),
                "train": ("indexTrain",)}
KEY_OPTION = {"image": "image_key", "text": "text_key", "labels": "label_key"}


@dataclass
class ImportedFeatures:
    """What :func:`load_feature_file` found: arrays in rows of pairs, splits and where they came from."""

    image: np.ndarray                      # n x d_x float32
    text: np.ndarray                       # n x d_y float32
    labels: np.ndarray                     # n x c uint8 multi-hot
    splits: dict[str, np.ndarray] | None   # 0-based; query+database without train is possible
    ids: list[str] | None
    source_format: str                     # mat-v4 | mat-v5 | mat-v7.3 | hdf5 | npz ('+'-joined)
    keys_used: dict[str, str]              # role -> "file:variable" (split style: several)
    files: list[Path] = field(default_factory=list)
    split_protocol: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.image)


def _read(where: str, load: Callable[[], Any]) -> Any:
    """``load()``; a damaged compressed block (.mat, .npz), a bad CRC or a cut-off HDF5 dataset is
    one line naming the variable."""
    try:
        return load()
    except (OSError, ValueError, EOFError, zlib.error, zipfile.BadZipFile, struct.error) as e:
        raise PipelineError(f"{where}: damaged data, cannot be read ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:160]}); copy the file again") from None


class _Var:
    """One array in one file, read lazily (raw images can be gigabytes)."""

    def __init__(self, file: Path, name: str, shape: tuple[int, ...] | None, load: Callable[[], Any],
                 column_major: bool = False) -> None:
        self.file, self.name, self._shape, self._load = file, name, shape, load
        self.column_major = column_major  # MATLAB v7.3 through h5py: the axes come reversed
        self._value: np.ndarray | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.name}"

    def value(self) -> np.ndarray:
        if self._value is None:
            v = _read(self.where, self._load)
            if hasattr(v, "toarray"):  # a MATLAB sparse matrix (a tag bag-of-words may be saved sparse)
                v = v.toarray()
            self._value = np.asarray(v)
        return self._value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._shape) if self._shape is not None else self.value().shape


@dataclass
class _Source:
    path: Path
    fmt: str
    vars: dict[str, _Var]
    structs: dict[str, dict[str, _Var]]

    @property
    def matlab(self) -> bool:
        return self.fmt.startswith("mat")


# ------------------------------------------------------------------------------------------ files

def _h5_sparse(path: Path, name: str, g: h5py.Group) -> _Var:
    """A v7.3 sparse matrix: CSC parts ``data``, ``ir``, ``jc`` of the MATLAB ``m x n`` matrix."""
    from scipy.sparse import csc_matrix

    m, n = int(g.attrs["MATLAB_sparse"]), len(g["jc"]) - 1
    data = g["data"][()] if "data" in g else np.ones(len(g["ir"]))

    def load() -> Any:
        return csc_matrix((data, g["ir"][()], g["jc"][()]), shape=(m, n))

    return _Var(path, name, (m, n), load, column_major=False)  # built in MATLAB's own orientation


def _open_h5(path: Path, stack: contextlib.ExitStack) -> _Source:
    try:
        f = stack.enter_context(h5py.File(path, "r"))
    except OSError as e:
        raise PipelineError(f"{path}: not a readable HDF5 file ({str(e).splitlines()[0]})") from None
    with open(path, "rb") as fh:
        head = fh.read(128)
    matlab = head.startswith(b"MATLAB") or any("MATLAB_class" in obj.attrs for obj in f.values())
    vars_: dict[str, _Var] = {}
    structs: dict[str, dict[str, _Var]] = {}
    for name, obj in f.items():
        if name.startswith("#"):  # MATLAB's #refs# / #subsystem# groups
            continue
        if isinstance(obj, h5py.Dataset):
            vars_[name] = _Var(path, name, obj.shape, lambda o=obj: o[()], column_major=matlab)
        elif "MATLAB_sparse" in obj.attrs:
            vars_[name] = _h5_sparse(path, name, obj)
        else:
            structs[name] = {k: _Var(path, f"{name}.{k}", v.shape, lambda v=v: v[()], column_major=matlab)
                             for k, v in obj.items() if isinstance(v, h5py.Dataset)}
    return _Source(path, "mat-v7.3" if matlab else "hdf5", vars_, structs)


def _open_npz(path: Path, stack: contextlib.ExitStack) -> _Source:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise PipelineError(f"{path}: not a readable .npz file, damaged or truncated ({str(e).splitlines()[0]})") from None
    stack.callback(z.close)
    return _Source(path, "npz", {k: _Var(path, k, None, lambda k=k: z[k]) for k in z.files}, {})


_MAT4_SIZES = {0: 8, 1: 4, 2: 4, 3: 2, 4: 2, 5: 1}  # MATLAB v4 precision digit P -> bytes per value


def _mat_truncated(path: Path) -> str | None:
    """Where a MATLAB v4/v5 file ends before its last variable does, else None.

    scipy's ``whosmat``/``loadmat`` stop quietly at a cut-off element: a truncated copy would
    import as a file without its last variables (labels missing, or worse, the split struct
    missing and a seeded split drawn instead of the authors'). Each element's declared size is
    checked against the file's size instead.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(128)
        if head.startswith(b"MATLAB 5.0") and len(head) == 128:  # v5: 128-byte header, tagged elements
            endian = "<" if head[126:128] == b"IM" else ">"
            off = 128
            while off < size:
                fh.seek(off)
                tag = fh.read(8)
                if len(tag) < 8:
                    return f"cut off at byte {size} inside the tag of the element at byte {off}"
                dtype, nbytes = struct.unpack(endian + "II", tag)
                if dtype >> 16:  # a small data element: type and size in 4 bytes, data in the other 4
                    off += 8
                    continue
                end = off + 8 + nbytes + (0 if dtype == 15 else (-nbytes) % 8)  # 15: miCOMPRESSED, unpadded
                if off + 8 + nbytes > size:
                    return f"cut off at byte {size}: the element at byte {off} needs {off + 8 + nbytes}"
                off = end
            return None
        off = 0  # v4: a 20-byte header per variable (type MOPT, rows, columns, imaginary, name length)
        while off < size:
            fh.seek(off)
            hdr = fh.read(20)
            if len(hdr) < 20:
                return f"cut off at byte {size} inside the header of the variable at byte {off}"
            for endian in "<>":
                mopt, rows, cols, imag, namlen = struct.unpack(endian + "iiiii", hdr)
                if 0 <= mopt < 5000 and (mopt // 10) % 10 in _MAT4_SIZES:
                    break
            else:
                return None  # not v4 after all: scipy says what it is
            n = rows * cols * _MAT4_SIZES[(mopt // 10) % 10] * (2 if imag else 1)
            end = off + 20 + namlen + n
            if end > size:
                return f"cut off at byte {size}: the variable at byte {off} needs {end}"
            off = end
    return None


def _open_mat(path: Path) -> _Source:
    # scipy reads MATLAB v4-v7.2 files; it comes with scikit-learn, so it is no new dependency.
    import scipy.io

    try:
        info = scipy.io.whosmat(str(path))
    except (zlib.error, EOFError, struct.error) as e:  # a damaged compressed element
        raise PipelineError(f"{path}: damaged MATLAB file ({type(e).__name__}: {str(e).splitlines()[0][:160]}); "
                            "copy it again") from None
    except (ValueError, TypeError, OSError, scipy.io.matlab.MatReadError) as e:
        raise PipelineError(f"{path}: not a MATLAB (.mat), HDF5 (.h5) or NumPy (.npz) file "
                            f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    cut = _mat_truncated(path)
    if cut:
        raise PipelineError(f"{path}: truncated MATLAB file ({cut}); copy it again")
    with open(path, "rb") as fh:
        fmt = "mat-v5" if fh.read(10).startswith(b"MATLAB 5.0") else "mat-v4"
    sp = str(path)
    vars_: dict[str, _Var] = {}
    structs: dict[str, dict[str, _Var]] = {}
    for name, shape, cls in info:
        if cls == "struct":
            fields = _read(f"{path}:{name}", lambda n=name: scipy.io.loadmat(
                sp, variable_names=[n], simplify_cells=True)[n])
            if isinstance(fields, dict):
                structs[name] = {k: _Var(path, f"{name}.{k}", None, lambda v=v: v) for k, v in fields.items()
                                 if isinstance(v, (np.ndarray, int, float))}
        else:
            vars_[name] = _Var(path, name, shape, lambda n=name: scipy.io.loadmat(sp, variable_names=[n])[n])
    return _Source(path, fmt, vars_, structs)


def _open(path: Path, stack: contextlib.ExitStack) -> _Source:
    """Open one file by its content (not its name): HDF5 (incl. MATLAB v7.3), .npz, else MATLAB v4-v7.2."""
    if path.is_dir():
        raise PipelineError(f"features file {path} is a directory, not a .mat/.h5/.npz file")
    if not path.is_file():
        raise PipelineError(f"missing features file: {path}")
    if h5py.is_hdf5(path):
        return _open_h5(path, stack)
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"  # a zip's first entry: .npz, complete or not
    if zipfile.is_zipfile(path) or zipped:
        return _open_npz(path, stack)
    return _open_mat(path)


class _Namespace:
    """The variables of all given files by name; a name in two files is an error when used."""

    def __init__(self, sources: list[_Source]) -> None:
        self.sources = sources
        self.by_name: dict[str, list[_Var]] = {}
        for s in sources:
            for name, v in s.vars.items():
                self.by_name.setdefault(name, []).append(v)

    def __contains__(self, name: str) -> bool:
        return name in self.by_name

    def get(self, name: str) -> _Var:
        vs = self.by_name[name]
        if len(vs) > 1:
            raise PipelineError(f"'{name}' is in several files ({', '.join(str(v.file) for v in vs)}); "
                                "pass only one of them")
        return vs[0]

    def files(self) -> str:
        return ", ".join(str(s.path) for s in self.sources)

    def keys(self) -> str:
        names = sorted(set(self.by_name) | {k for s in self.sources for k in s.structs})
        return ", ".join(names[:30]) + (f", ... ({len(names)} in all)" if len(names) > 30 else "") or "none"

    def source_of(self, v: _Var) -> _Source:
        return next(s for s in self.sources if s.path == v.file)


# ------------------------------------------------------------------------------------ orientation

def _check_dims(role: str, v: _Var) -> None:
    shape = v.shape
    if role == "image" and len(shape) == 4:
        raise PipelineError(f"{v.file}: '{v.name}' holds raw images (shape {shape}); extract features first "
                            "or point image_key at a feature matrix")
    ok = len(shape) == 2 or (role == "labels" and len(shape) == 1)
    if not ok:
        want = "a 2-D matrix or a class vector" if role == "labels" else "a 2-D matrix (pairs x features)"
        raise PipelineError(f"{v.file}: '{v.name}' ({role}) must be {want}, got shape {shape}")


def _natural_rows(v: _Var) -> int:
    return v.shape[-1] if v.column_major and len(v.shape) == 2 else v.shape[0]


def _orient(group: dict[str, _Var], notes: list[str]) -> tuple[dict[str, np.ndarray], int]:
    """Read image/text/labels with rows = pairs, deciding each matrix's orientation (see module doc)."""
    for role, v in group.items():
        _check_dims(role, v)
    natural = {role: _natural_rows(v) for role, v in group.items()}
    if len(set(natural.values())) == 1:
        n = next(iter(natural.values()))
    else:
        common = set.intersection(*(set(v.shape) for v in group.values()))
        if len(common) != 1:
            desc = ", ".join(f"{role} {v.where} {v.shape}" for role, v in group.items())
            raise PipelineError(f"row counts differ: {desc} (no single number of pairs, read either way)")
        n = common.pop()
    out = {}
    for role, v in group.items():
        a = v.value()
        if a.ndim == 2:
            if v.column_major:
                a = a.T
            if a.shape[0] != n:
                a = a.T
                notes.append(f"{v.where}: read transposed, {a.shape[0]} rows x {a.shape[1]} columns")
                log.info("%s read transposed (%d x %d)", v.where, *a.shape)
        out[role] = a
    if n == 0:
        raise PipelineError(f"{group['image'].where}: no rows")
    return out, n


def _features(a: np.ndarray, v: _Var) -> np.ndarray:
    """Float32 feature rows; one line naming the file and key for non-numbers or NaN/inf."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise PipelineError(f"{v.file}: '{v.name}' holds {a.dtype} values, not numbers")
    a = a.astype(np.float32)
    bad = ~np.isfinite(a).all(axis=1)
    if bad.any():
        raise PipelineError(f"{v.file}: '{v.name}' has NaN/inf in {int(bad.sum())} rows "
                            f"(first row {int(np.argmax(bad))})")
    return a


def _labels(a: np.ndarray, where: str, notes: list[str]) -> np.ndarray:
    """0/1 multi-hot rows; a single-label class vector becomes one-hot (columns: sorted class values)."""
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise PipelineError(f"{where}: labels hold {a.dtype} values, not numbers")
    if a.ndim == 1 or a.shape[1] == 1:
        v = a.reshape(-1)
        if not (np.isfinite(v).all() and np.all(v == np.round(v))):
            raise PipelineError(f"{where}: a label vector must hold integer class ids")
        classes = np.unique(v)
        notes.append(f"{where}: single-label class vector converted to one-hot over {len(classes)} classes "
                     f"(column j = class value {classes[:10].tolist()}{'...' if len(classes) > 10 else ''}[j])")
        log.info("%s: class vector -> one-hot over %d classes", where, len(classes))
        return (v[:, None] == classes[None, :]).astype(np.uint8)
    bad = ~np.isin(a, (0, 1))
    if bad.any():
        vals = np.unique(a[bad])[:3].tolist()
        raise PipelineError(f"{where}: labels must be 0/1 multi-hot, found {vals} (convert -1/+1 or scores first)")
    return a.astype(np.uint8)


def _label_source(vars_: Sequence[_Var]) -> str:
    return ", ".join(v.where for v in vars_)


# -------------------------------------------------------------------------------------- splits

def _index_vector(a: Any, n: int, where: str, one_based: bool) -> np.ndarray:
    """A split as 0-based int64 indices (file order kept), checked against ``n`` rows."""
    v = np.asarray(a).reshape(-1)
    base = 1 if one_based else 0
    if v.size == 0:
        raise PipelineError(f"{where}: empty split")
    if not np.issubdtype(v.dtype, np.number) or not np.all(v == np.round(v)):
        raise PipelineError(f"{where}: split indices must be integers")
    v = v.astype(np.int64)
    if one_based and v.min() < 1:
        raise PipelineError(f"{where}: index {int(v.min())} < 1, but MATLAB indices start at 1")
    if v.min() < base or v.max() >= n + base:
        raise PipelineError(f"{where}: indices outside {base}..{n - 1 + base} ({n} pairs)")
    if len(np.unique(v)) != len(v):
        raise PipelineError(f"{where}: repeated indices")
    return v - base


def _file_splits(ns: _Namespace, n: int) -> tuple[dict[str, np.ndarray] | None, str | None, str | None]:
    """Splits stored next to all-style arrays: ours (0-based) or DCMH's ``param`` (1-based)."""
    ours = {s: ns.get(s) for s in SPLITS if s in ns and not ns.source_of(ns.get(s)).matlab}
    if ours:
        got = {s: _index_vector(v.value(), n, v.where, one_based=False) for s, v in ours.items()}
        where = _label_source(list(ours.values()))
        return got, "from file (0-based query/database/train)", where
    fields: dict[str, _Var] = {}
    for src in ns.sources:
        if not src.matlab:
            continue
        for holder in [src.vars, *src.structs.values()]:
            for split, names in PARAM_FIELDS.items():
                for name in names:
                    if name in holder and split not in fields:
                        fields[split] = holder[name]
    if not fields:
        return None, None, None
    got = {s: _index_vector(v.value(), n, v.where, one_based=True) for s, v in fields.items()}
    return got, "from file (DCMH param, 1-based MATLAB indices converted to 0-based)", _label_source(
        list(fields.values()))


# ------------------------------------------------------------------------------------- layouts

def _pick_all_style(ns: _Namespace, keys: dict[str, str | None]) -> dict[str, _Var] | None:
    """Image/text/labels variables of an all-style file (overrides first), or None when one is absent."""
    out: dict[str, _Var] = {}
    for role in ROLES:
        if keys[role]:
            if keys[role] not in ns:
                return None
            out[role] = ns.get(keys[role])
            continue
        present = [ns.get(k) for k in CANDIDATES[role] if k in ns]
        if not present:
            return None
        if role == "image":  # features before raw pixels; raw only if nothing else (an error below)
            present.sort(key=lambda v: len(v.shape) == 4)
        out[role] = present[0]
    return out


def _pick_split_style(ns: _Namespace, keys: dict[str, str | None]) -> dict[str, dict[str, _Var]] | None:
    """Part -> role -> variable of a split-style file, or None when no style fits."""
    styles = list(SPLIT_STYLES)
    if any(keys.values()):  # overrides name prefixes: X -> X_te, X_db, X_tr
        styles = [{role: ({p: f"{keys[role]}_{p}" for p in PARTS} if keys[role] else SPLIT_STYLES[0][role])
                   for role in ROLES}]
    for style in styles:
        parts = {p: {role: ns.get(style[role][p]) for role in ROLES} for p in PARTS
                 if all(style[role][p] in ns for role in ROLES)}
        if "te" in parts and ("db" in parts or "tr" in parts):
            return parts
    return None


def _missing(ns: _Namespace, keys: dict[str, str | None]) -> PipelineError:
    for role in ROLES:
        if keys[role] and keys[role] not in ns and f"{keys[role]}_te" not in ns:
            return PipelineError(f"{ns.files()}: no variable '{keys[role]}' ({KEY_OPTION[role]}); "
                                 f"keys found: {ns.keys()}")
    for role in ROLES:
        if not keys[role] and not any(k in ns for k in CANDIDATES[role]):
            looked = ", ".join(CANDIDATES[role])
            return PipelineError(f"{ns.files()}: no {role} matrix (looked for {looked} and split-style "
                                 f"I_te/T_te/L_te...); keys found: {ns.keys()}; name it with "
                                 f"import_keys.{role} (--{role.rstrip('s')}-key)")
    return PipelineError(f"{ns.files()}: cannot tell image, text and labels apart; keys found: {ns.keys()}")


def _load_all_style(ns: _Namespace, chosen: dict[str, _Var], notes: list[str]) -> ImportedFeatures:
    arrays, n = _orient(chosen, notes)
    image = _features(arrays["image"], chosen["image"])
    text = _features(arrays["text"], chosen["text"])
    labels = _labels(arrays["labels"], chosen["labels"].where, notes)
    splits, protocol, split_where = _file_splits(ns, n)
    ids = None
    if "ids" in ns and not ns.source_of(ns.get("ids")).matlab:  # ours: a string dataset
        v = ns.get("ids")
        ids = [x.decode() if isinstance(x, bytes) else str(x) for x in v.value().reshape(-1)]
        if len(ids) != n:
            raise PipelineError(f"{v.file}: 'ids' has {len(ids)} entries for {n} pairs")
    keys_used = {role: v.where for role, v in chosen.items()}
    if split_where:
        keys_used["splits"] = split_where
    return ImportedFeatures(image=image, text=text, labels=labels, splits=splits, ids=ids, source_format="",
                            keys_used=keys_used, split_protocol=protocol, notes=notes)


def _row_keys(image: np.ndarray, text: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """A 128-bit digest of each pair (image, text, labels), to find training rows among the database rows.

    Digests rather than the rows' bytes: 18,000 MIRFlickr rows of 4,096 + 1,386 floats would hold
    400 MB of keys.
    """
    return [hashlib.blake2b(image[i].tobytes() + text[i].tobytes() + labels[i].tobytes(), digest_size=16).digest()
            for i in range(len(image))]


def _load_split_style(parts: dict[str, dict[str, _Var]], notes: list[str]) -> ImportedFeatures:
    """Rows ``[te; db]`` (+ tr rows not found in db); query = te, database = db, train = tr (module doc)."""
    arrays = {p: _orient(group, notes)[0] for p, group in parts.items()}
    for role in ("image", "text"):
        dims = {p: a[role].shape[1] for p, a in arrays.items()}
        if len(set(dims.values())) > 1:
            desc = ", ".join(f"{parts[p][role].where} {d}" for p, d in dims.items())
            raise PipelineError(f"{role} columns differ between parts: {desc}")
    feats = {p: {role: _features(arrays[p][role], parts[p][role]) for role in ("image", "text")} for p in arrays}
    label_vars = [parts[p]["labels"] for p in arrays]
    raw = [arrays[p]["labels"] for p in arrays]
    vectors = [a.ndim == 1 or a.shape[1] == 1 for a in raw]
    if any(vectors) and not all(vectors):
        raise PipelineError(f"labels mix class vectors and multi-hot matrices: {_label_source(label_vars)}")
    if all(vectors):
        raw = [a.reshape(-1) for a in raw]
    elif len({a.shape[1] for a in raw}) > 1:
        desc = ", ".join(f"{v.where} {a.shape[1]}" for v, a in zip(label_vars, raw))
        raise PipelineError(f"labels columns differ between parts: {desc}")
    # one conversion over all parts, so that a class vector maps to the same columns everywhere
    all_labels = _labels(np.concatenate(raw), _label_source(label_vars), notes)
    bounds = np.cumsum([0] + [len(a) for a in raw])
    for (p, part), lo, hi in zip(arrays.items(), bounds[:-1], bounds[1:]):
        part["labels"] = all_labels[lo:hi]
        part.update(feats[p])

    te = arrays["te"]
    n_te = len(te["labels"])
    blocks = [te]
    ids = [f"te:{i}" for i in range(n_te)]
    query = np.arange(n_te)
    train: np.ndarray | None
    if "db" in arrays:
        db = arrays["db"]
        n_db = len(db["labels"])
        blocks.append(db)
        ids += [f"db:{i}" for i in range(n_db)]
        database = n_te + np.arange(n_db)
        train, protocol = None, "split-style: query = te, database = db"
        if "tr" in arrays:
            tr = arrays["tr"]
            lookup: dict[bytes, list[int]] = {}
            for i, key in enumerate(_row_keys(db["image"], db["text"], db["labels"])):
                lookup.setdefault(key, []).append(i)
            found, missing = [], []
            for i, key in enumerate(_row_keys(tr["image"], tr["text"], tr["labels"])):
                if lookup.get(key):
                    found.append(n_te + lookup[key].pop(0))
                else:
                    missing.append(i)
            extra = np.array(missing, dtype=np.int64)
            if len(extra):
                blocks.append({role: tr[role][extra] for role in ROLES})
                ids += [f"tr:{i}" for i in extra]
            train = np.concatenate([np.array(found, dtype=np.int64), n_te + n_db + np.arange(len(extra))])
            protocol += f", train = tr ({len(found)} rows found in db"
            protocol += f", {len(extra)} not found: appended after db, not searched)" if len(extra) else ")"
    else:
        n_tr = len(arrays["tr"]["labels"])
        blocks.append(arrays["tr"])
        ids += [f"tr:{i}" for i in range(n_tr)]
        database = n_te + np.arange(n_tr)
        train = database.copy()
        protocol = "split-style without db: query = te, database = train = tr"
    splits = {"query": query.astype(np.int64), "database": database.astype(np.int64)}
    if train is not None:
        splits["train"] = np.sort(train).astype(np.int64)
    keys_used = {role: ", ".join(parts[p][role].where for p in parts) for role in ROLES}
    image, text, labels = (np.concatenate([b[role] for b in blocks]) for role in ROLES)
    return ImportedFeatures(image=image, text=text, labels=labels, splits=splits, ids=ids, source_format="",
                            keys_used=keys_used, split_protocol=protocol, notes=notes)


def load_feature_file(paths: Path | str | Sequence[Path | str], *, image_key: str | None = None,
                      text_key: str | None = None, label_key: str | None = None) -> ImportedFeatures:
    """Read image features, text features, labels and any split from one or several files.

    The layout is detected (see the module docstring); ``image_key``/``text_key``/``label_key``
    name the variables (or split-style prefixes) when detection cannot. Errors are one line
    naming the file and the key.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not paths:
        raise PipelineError("no features file given")
    keys = {"image": image_key or None, "text": text_key or None, "labels": label_key or None}
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        sources = [_open(p, stack) for p in paths]
        ns = _Namespace(sources)
        chosen = _pick_all_style(ns, keys)
        if chosen is not None:
            imp = _load_all_style(ns, chosen, notes)
        else:
            parts = _pick_split_style(ns, keys)
            if parts is None:
                raise _missing(ns, keys)
            imp = _load_split_style(parts, notes)
    imp.files = paths
    imp.source_format = "+".join(sorted({s.fmt for s in sources}))
    no_label = int((imp.labels.sum(1) == 0).sum())
    if no_label:
        log.warning("%d of %d pairs have no label (never relevant in the evaluation)", no_label, imp.n)
    log.info("read %s (%s): %d pairs, image %s, text %s, labels %s, splits %s", ns.files(), imp.source_format,
             imp.n, imp.image.shape[1], imp.text.shape[1], imp.labels.shape[1], imp.split_protocol or "none")
    return imp


def choose_splits(imp: ImportedFeatures, n_query: int | None, n_train: int | None,
                  seed: int) -> tuple[dict[str, np.ndarray], str]:
    """The file's split when complete; its query/database plus a seeded training draw; else a seeded split.

    The draws are :func:`pipeline.data.splits.split_indices` (the paper's protocol), so the same
    seed gives the same indices as for any other data set.
    """
    from pipeline.data.splits import split_indices

    given = imp.splits or {}
    if all(s in given for s in SPLITS):
        return {s: np.asarray(given[s], dtype=np.int64) for s in SPLITS}, imp.split_protocol or "from file"
    if given and not ("query" in given and "database" in given):
        raise PipelineError(f"{imp.keys_used.get('splits', imp.files[0] if imp.files else '?')}: has split(s) "
                            f"{sorted(given)} but not both query and database")
    if not given:
        if n_query is None or n_train is None:
            raise PipelineError("the features file has no query/database/train split: set n_query and n_train "
                                "(--n-query, --n-train)")
        return split_indices(imp.n, int(n_query), int(n_train), seed), "seeded"
    if n_train is None:
        raise PipelineError("the features file has query and database but no training split: set n_train "
                            "(--n-train)")
    q, d = given["query"], given["database"]
    fixed: list[str | None] = [None] * imp.n
    for i in d:
        fixed[i] = "database"
    for i in q:
        fixed[i] = "query"
    if len(np.intersect1d(q, d)) or any(f is None for f in fixed):
        raise PipelineError("the file's query and database splits must be disjoint and cover every pair "
                            "to draw a training split from the database; add a train split")
    splits = split_indices(imp.n, len(q), int(n_train), seed, fixed=fixed)
    return splits, f"{imp.split_protocol}; train: {n_train} drawn from the database (seed {seed})"
