"""The ``cmimh`` command: one subcommand per pipeline stage, each also runnable by hand.

Snakemake rules call these with ``--settings JSON`` (the resolved settings of one data set);
by hand, ``--config config.yaml [--dataset NAME]`` resolves the same settings. Errors a user
can cause print one line (``cmimh: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError

log = logging.getLogger("cmimh")

#: The longest code (bits) a model is trained for: the schema's code_lengths maximum.
MAX_BITS = 1024


def _settings_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (one of)")
    g.add_argument("--settings", help="resolved data set settings as JSON (what the Snakemake rules pass)")
    g.add_argument("--config", help="a config.yaml to resolve the settings from (default: the repo's)")
    g.add_argument("--dataset", help="with --config: the data set (default: the config's)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log", help="also write the whole log (every message, and the traceback of an unexpected "
                                 "error) to this file; the console keeps warnings and the one-line error")


def _settings(a, stage: str, method: str | None = None) -> dict:
    """The rule's ``--settings`` JSON, or by hand the same settings resolved from ``--config``."""
    from pipeline.config import settings_from_args

    return settings_from_args(a.settings, a.config, a.dataset, stage=stage, method=method)


def _device(s: dict):
    from pipeline.model.train import resolve_device

    return resolve_device(s.get("device", "auto"))


def cmd_prepare(a) -> None:
    s = _settings(a, "prepare")
    out = Path(a.output)
    src = s["source"]
    if out.name != "manifest.jsonl":
        raise PipelineError(f"prepare output must be named manifest.jsonl, not {out.name}")
    if src == "demo":
        from pipeline.data.demo import generate_demo, summarize

        generate_demo(out.parent, n_pairs=int(s.get("n_pairs", 2500)), seed=int(s["seed"]),
                      image_size=int(s.get("image_size", 96)), progress=not a.no_progress)
        log.info("demo data set: %s", summarize(out))
    elif src in ("mirflickr25k", "nuswide", "mscoco"):
        import importlib

        adapter = importlib.import_module(f"pipeline.data.{src}")
        adapter.prepare(out.parent, s, progress=not a.no_progress)
    else:
        raise PipelineError(f"dataset {s['dataset']!r}: no prepare adapter for source {src!r}")


def cmd_extract(a) -> None:
    from pipeline.features import extract

    out = Path(a.output)
    if a.part == "merge":  # reads only the shard files (and the manifest, to check their ids)
        if not a.parts:
            raise PipelineError("extract merge: give the shard files with --parts")
        extract.merge_fc7([Path(p) for p in a.parts], out, Path(a.manifest) if a.manifest else None,
                          progress=not a.no_progress)
        return
    if (a.shard is None) != (a.shards is None) or (a.shard is not None and a.part != "image"):
        raise PipelineError("--shard I and --shards N go together, with extract image")
    s = _settings(a, {"image": "extract_image", "text": "extract_text", "assemble": "extract",
                      "import": "import_features"}[a.part])
    if a.part == "import":
        extract.run_import(Path(a.src or s.get("path", "")), s, out)
        return
    if not a.manifest:
        raise PipelineError(f"extract {a.part}: --manifest is required")
    if a.part == "assemble":
        if not (a.fc7 and a.text):
            raise PipelineError("extract assemble: --fc7 and --text are required")
        extract.run_assemble(Path(a.manifest), Path(a.fc7), Path(a.text), s, out)
        return
    dev = _device(s)
    if a.part == "image":
        extract.run_image(Path(a.manifest), s, out, dev, progress=not a.no_progress,
                          shard=None if a.shard is None else (a.shard, a.shards))
    else:
        extract.run_text(Path(a.manifest), s, out, dev, progress=not a.no_progress)


def cmd_import(a) -> None:
    """``cmimh import SRC... -o features.h5``: ``extract import`` by hand, for files from other projects."""
    from pipeline.features import extract

    if a.settings or a.config or a.dataset:
        s = _settings(a, "import_features")
    else:  # no config needed: only what the import reads
        s = {"dataset": "imported", "seed": 0}
    for key, value in (("n_query", a.n_query), ("n_train", a.n_train), ("seed", a.seed)):
        if value is not None:
            s[key] = value
    if a.allow_overlap:
        s["allow_overlap"] = True
    keys = {"image": a.image_key, "text": a.text_key, "labels": a.label_key}
    s["import_keys"] = {**(s.get("import_keys") or {}), **{k: v for k, v in keys.items() if v}}
    srcs = [Path(p) for p in a.src] or ([Path(s["path"])] if s.get("path") else [])
    if not srcs:
        raise PipelineError("import: give the features file(s) SRC, or a data set with path: in the config")
    extract.run_import(srcs, s, Path(a.output))


def cmd_train(a) -> None:
    from pipeline.config import method_settings
    from pipeline.features.store import read_features
    from pipeline.io import provenance, sha256_file, without_timings
    from pipeline.methods import save_trained, train_method, training_rows
    from pipeline.tune import tuned_settings

    # --tuned: the tune target's chosen settings first, then the method name's variants
    s = method_settings(tuned_settings(_settings(a, "train", a.method), a.method, a.tuned), a.method)
    if not 1 <= a.bits <= MAX_BITS:
        raise PipelineError(f"code length (--bits) must be between 1 and {MAX_BITS}, not {a.bits}")
    feats = read_features(a.features)
    tr = training_rows(feats, s)
    model, history = train_method(a.method, feats.image[tr], feats.text[tr], a.bits, s, int(s["seed"]),
                                  _device(s), log_csv=Path(a.log_csv) if a.log_csv else None,
                                  progress=not a.no_progress)
    meta = provenance(s, stage="train", method=a.method, bits=a.bits, n_train=int(len(tr)),
                      features_sha256=sha256_file(a.features), dataset=s["dataset"],
                      final=without_timings(history[-1]) if history else None)
    save_trained(a.output, a.method, model, meta)
    if a.plot and a.log_csv:
        from pipeline.config import base_method
        from pipeline.methods import BASELINES, baseline_module
        from pipeline.report.report import plot_train_log

        base = base_method(a.method)
        spec = baseline_module(base).PLOT if base in BASELINES else {"x": "epoch", "columns": None}
        plot_train_log(Path(a.log_csv), Path(a.plot), **spec)


def cmd_encode(a) -> None:
    from pipeline.model.encode import encode_stage

    s = _settings(a, "encode")
    encode_stage(Path(a.model), Path(a.features), Path(a.output), s, _device(s),
                 index_dir=Path(a.index) if a.index else None)


def cmd_evaluate(a) -> None:
    from pipeline.eval.evaluate import evaluate_file

    if a.k < 1:
        raise PipelineError(f"--k must be >= 1, not {a.k}")
    evaluate_file(Path(a.codes), Path(a.output), k=a.k)


def cmd_report(a) -> None:
    from pipeline.report.report import write_report

    if a.k < 1:
        raise PipelineError(f"--k must be >= 1, not {a.k}")
    bad = next((b for b in a.bits if not 1 <= b <= MAX_BITS), None)
    if bad is not None:
        raise PipelineError(f"--bits: a code length is between 1 and {MAX_BITS}, not {bad}")
    write_report(Path(a.results), a.dataset, [int(b) for b in a.bits], a.methods, Path(a.output), k=a.k,
                 include=[Path(p) for p in a.include], html=Path(a.html) if a.html else None)


def cmd_study(a) -> None:
    from pipeline.report.studies import study_settings_from_args, write_study

    if a.k is not None and a.k < 1:
        raise PipelineError(f"--k must be >= 1, not {a.k}")
    s = study_settings_from_args(a.settings, a.config, a.dataset)
    write_study(a.name, s, Path(a.results), Path(a.output), Path(a.plot) if a.plot else None, k=a.k)


def cmd_tune(a) -> None:
    from pipeline import tune

    t = tune.tune_settings_from_args(a.tune, a.config, a.dataset)
    if a.part == "point":
        if a.point is None or a.fold is None or not a.features:
            raise PipelineError("tune point needs --features, --point and --fold")
        s = _settings(a, "train", "cmimh")
        tune.point_stage(Path(a.features), s, t, a.point, a.fold, Path(a.output), _device(s),
                         progress=not a.no_progress)
        return
    tune.select_stage([Path(p) for p in a.records], t, Path(a.output), Path(a.table) if a.table else None,
                      Path(a.plot) if a.plot else None)


def cmd_search(a) -> None:
    from pipeline.search.index import search_cli

    search_cli(a)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cmimh", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prepare", help="download/generate and filter a data set into its raw on-disk form")
    _settings_args(q); _common(q)
    q.add_argument("-o", "--output", required=True, help="data/{dataset}/manifest.jsonl")
    q.set_defaults(fn=cmd_prepare)

    q = sub.add_parser("extract", help="image/text features -> features.h5")
    q.add_argument("part", choices=["image", "merge", "text", "assemble", "import"],
                   help="image: FC7 (all, or one --shard of --shards); merge: shard files -> fc7.h5; "
                        "text; assemble: PCA, splits -> features.h5; import: your own features")
    _settings_args(q); _common(q)
    q.add_argument("--manifest", help="data/{dataset}/manifest.jsonl (image, text, assemble; merge: to check ids)")
    q.add_argument("--shard", type=int, help="image: extract shard I (0-based) of --shards N, a contiguous row range")
    q.add_argument("--shards", type=int, help="image: the number of shards")
    q.add_argument("--parts", nargs="+", help="merge: the shard files")
    q.add_argument("--fc7", help="assemble: the image part's output")
    q.add_argument("--text", help="assemble: the text part's output")
    q.add_argument("--src", help="import: the user's features HDF5 (default: the data set's path)")
    q.add_argument("-o", "--output", required=True)
    q.set_defaults(fn=cmd_extract)

    q = sub.add_parser("import", help="pre-extracted features (.mat/.h5/.npz: ours, DCMH, DJSRH, UCCH, "
                                      "split-style) -> features.h5")
    q.add_argument("src", nargs="*", help="the file(s), e.g. mirflickr25k-iall-vgg.mat mirflickr25k-yall.mat "
                                          "mirflickr25k-lall.mat (default: the data set's path)")
    _settings_args(q); _common(q)
    q.add_argument("-o", "--output", required=True, help="results/{dataset}/features.h5")
    q.add_argument("--n-query", type=int, help="queries to draw when the file has no split")
    q.add_argument("--n-train", type=int, help="training pairs to draw when the file has none")
    q.add_argument("--seed", type=int, help="seed of those draws (default: the config's, else 0)")
    q.add_argument("--image-key", help="the image feature variable (or split-style prefix) if not detected")
    q.add_argument("--text-key", help="the text feature variable (or prefix) if not detected")
    q.add_argument("--label-key", help="the label variable (or prefix) if not detected")
    q.add_argument("--allow-overlap", action="store_true",
                   help="accept queries that are also in the file's database or training split (refused by default; "
                        "recorded in the provenance)")
    q.set_defaults(fn=cmd_import)

    q = sub.add_parser("train", help="train a hashing model for one code length")
    _settings_args(q); _common(q)
    q.add_argument("--features", required=True)
    q.add_argument("--bits", type=int, required=True)
    q.add_argument("--method", default="cmimh")
    q.add_argument("--log-csv", help="per-epoch loss terms (CSV)")
    q.add_argument("--plot", help="loss curves (PNG)")
    q.add_argument("--tuned", help="results/{dataset}/tune/cmimh.json: settings chosen by `cmimh tune select` "
                                   "(for a method ending in -tuned)")
    q.add_argument("-o", "--output", required=True, help="model.pt")
    q.set_defaults(fn=cmd_train)

    q = sub.add_parser("encode", help="hash codes of queries and database -> codes.h5 (+ index)")
    _settings_args(q); _common(q)
    q.add_argument("--model", required=True)
    q.add_argument("--features", required=True)
    q.add_argument("--index", help="also write a searchable index folder here")
    q.add_argument("-o", "--output", required=True, help="codes.h5")
    q.set_defaults(fn=cmd_encode)

    q = sub.add_parser("evaluate", help="retrieval metrics of any codes.h5")
    q.add_argument("codes")
    q.add_argument("-o", "--output", required=True, help="metrics.json")
    q.add_argument("--k", type=int, default=1000, help="cut-off of the main mAP (default 1000)")
    _common(q)
    q.set_defaults(fn=cmd_evaluate)

    q = sub.add_parser("report", help="tables and plots over code lengths and methods")
    q.add_argument("--results", required=True, help="results/{dataset}")
    q.add_argument("--dataset", required=True)
    q.add_argument("--bits", nargs="+", type=int, required=True)
    q.add_argument("--methods", nargs="+", default=["cmimh"])
    q.add_argument("--k", type=int, default=1000)
    q.add_argument("--include", nargs="*", default=[], help="Markdown sections to add (experiment tables)")
    q.add_argument("--html", help="also write the report as one self-contained HTML page (tables and plots)")
    q.add_argument("-o", "--output", required=True, help="report.md")
    _common(q)
    q.set_defaults(fn=cmd_report)

    q = sub.add_parser("study", help="one of the paper's studies as a Markdown table and a plot")
    q.add_argument("name", choices=["code_lengths", "mi_sweep", "kl_sweep", "train_size", "critic_input",
                                    "ablation", "tc_study"])
    g = q.add_argument_group("settings (one of)")
    g.add_argument("--settings", help="resolved study settings as JSON (what the Snakemake rules pass)")
    g.add_argument("--config", help="a config.yaml to resolve them from (default: the repo's)")
    g.add_argument("--dataset", help="with --config: the data set (default: the config's)")
    q.add_argument("--results", required=True, help="results/{dataset}")
    q.add_argument("--k", type=int, default=None, help="mAP cut-off (default: the settings' eval_k)")
    q.add_argument("--plot", help="the study's plot (PNG)")
    q.add_argument("-o", "--output", required=True, help="results/{dataset}/studies/NAME.md")
    _common(q)
    q.set_defaults(fn=cmd_study)

    q = sub.add_parser("tune", help="hyper-parameter selection on a validation split of the database")
    q.add_argument("part", choices=["point", "select"],
                   help="point: train and score one grid point on one fold; select: pick the best")
    _settings_args(q); _common(q)
    q.add_argument("--tune", help="resolved tune settings as JSON (what the Snakemake rules pass)")
    q.add_argument("--features", help="point: results/{dataset}/features.h5")
    q.add_argument("--point", help="point: a grid point's name, e.g. mi1-kl0.5-lr0.001")
    q.add_argument("--fold", type=int, help="point: the fold (0-based)")
    q.add_argument("--table", help="select: studies/tune.md")
    q.add_argument("--plot", help="select: studies/tune.png")
    q.add_argument("--records", nargs="+", default=[], help="select: the points' validation JSON files")
    q.add_argument("-o", "--output", required=True, help="point: a validation JSON; select: tune/cmimh.json")
    q.set_defaults(fn=cmd_tune)

    q = sub.add_parser("search", help="query an index with a text or an image")
    q.add_argument("index", help="results/{dataset}/{method}/{bits}/index")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--image")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--backend", choices=["exact", "faiss", "faiss-hash"], default="exact",
                   help="exact NumPy ranking (default); faiss IndexBinaryFlat (exact, same results); "
                        "faiss-hash IndexBinaryHash (approximate; needs pip install faiss-cpu)")
    q.add_argument("--target", choices=["image", "text"], default=None,
                   help="search database images or texts (default: the other modality)")
    _common(q)
    q.set_defaults(fn=cmd_search)
    return p


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextlib.contextmanager
def _logging(args) -> Iterator[logging.Logger]:
    """Log records to the console (INFO, or WARNING and up with ``--log``) and to the ``--log`` file.

    Installed for this call only (tests call :func:`main` many times in one process). Python
    warnings become log records, so they reach the file too.
    """
    root = logging.getLogger()
    handlers: list[logging.Handler] = []
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.DEBUG if args.verbose else (logging.WARNING if args.log else logging.INFO))
    console.addFilter(lambda r: getattr(r, "console", True))  # records meant for the log file only
    handlers.append(console)
    if args.log:
        from pipeline.io import check_output_path

        try:
            check_output_path(args.log)
        except PipelineError as e:
            raise PipelineError(f"the log file: {e}") from None
        try:
            Path(args.log).parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.FileHandler(args.log, mode="w", encoding="utf-8"))
        except OSError as e:
            raise PipelineError(f"cannot write the log file {args.log}: {e.strerror or e}") from None
    for h in handlers:
        h.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(h)
    old_level = root.level
    root.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.captureWarnings(True)
    try:
        yield root
    finally:
        logging.captureWarnings(False)
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


def _fail(message: str, status: int) -> int:
    """The one line a person sees on the console (and, through the log handlers, in the log file)."""
    log.error("%s", message, extra={"console": False})
    print(f"cmimh: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Exit status 0, 2 for a user error (one line ``cmimh: error: ...`` on
    stderr), 1 for an unexpected error (one line; its traceback goes to the ``--log`` file, or to
    the console with ``-v``), 130 when interrupted."""
    args = build_parser().parse_args(argv)
    args.log = getattr(args, "log", None)
    try:
        cm = _logging(args)
        root = cm.__enter__()
    except PipelineError as e:
        print(f"cmimh: error: {e}", file=sys.stderr)
        return 2
    old_term, old_hook = _terminate_as_exception(), sys.unraisablehook
    try:
        return _run(args, root)
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        sys.unraisablehook = old_hook
        cm.__exit__(None, None, None)


class Terminated(BaseException):
    """SIGTERM (a scheduler's time limit, ``scancel``, Snakemake stopping its jobs), raised so that
    temporary files are removed on the way out, like for Ctrl-C."""


def _terminate_as_exception():
    """Turn SIGTERM into :class:`Terminated`; return the old handler (None off the main thread)."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked worker (DataLoader num_workers): end as before, quietly
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        # Workers killed by the same signal make torch's SIGCHLD handler raise in DataLoader.__del__
        # while the stack unwinds ("Exception ignored ... Traceback"): after a SIGTERM that noise goes
        # to the log file only.
        sys.unraisablehook = lambda u: log.debug("after SIGTERM: %s: %s", type(u.exc_value).__name__,
                                                  u.exc_value, extra={"console": False})
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave the signal alone
        return None


def _run(args, root: logging.Logger) -> int:
    limits = contextlib.nullcontext()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if getattr(args, "threads", None):
            import torch
            from threadpoolctl import threadpool_limits  # installed with scikit-learn

            torch.set_num_threads(max(1, args.threads))
            # numpy/scipy BLAS too (the shallow baselines, PCA): jobs running side by side must not
            # each start one BLAS thread per core (measured 10-20x slower when oversubscribed).
            limits = threadpool_limits(max(1, args.threads))
        _check_outputs(args)
        with limits:
            args.fn(args)
    except PipelineError as e:
        return _fail(f"error: {e}", 2)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except Terminated:
        return _fail("terminated (SIGTERM); nothing half-written is left, a rerun starts again or resumes", 143)
    except Exception as e:  # noqa: BLE001 - out of memory, a failed write, else a bug (_unexpected)
        if not _out_of_memory(e):
            return _unexpected(args, e)
        return _fail(f"error: out of memory in `cmimh {args.command}` (use a smaller batch_size, fewer threads, "
                     "or a machine with more memory)", 2)
    return 0


#: The options that name an output file, in any subcommand that has them.
OUTPUT_OPTIONS = ("output", "log_csv", "plot", "html", "table")


def _check_outputs(args) -> None:
    """An output that can never be written (an existing folder, a path below a file) is one line
    before the work, not after hours of training or extraction."""
    from pipeline.io import check_output_path

    for name in OUTPUT_OPTIONS:
        if getattr(args, name, None):
            check_output_path(getattr(args, name))
    if args.command == "encode" and args.index:
        check_output_path(args.index, folder=True)


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, or torch's failed allocation (a RuntimeError: ``DefaultCPUAllocator:
    can't allocate memory``, ``CUDA out of memory``): too little memory, not a bug."""
    if isinstance(e, MemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def _unexpected(args, e: Exception) -> int:
    """The last line of defence: one line, the traceback in the log."""
    from pipeline.io import write_error, write_failure

    if write_failure(e) is not None:
        return _fail(f"error: {write_error(None, e)}", 2)
    msg = (str(e).strip().splitlines() or [""])[0][:300]
    if args.verbose or args.log:
        log.exception("unexpected error in `cmimh %s`", args.command, extra={"console": bool(args.verbose)})
    where = f"the traceback is in {args.log}" if args.log else "rerun with -v for the traceback"
    return _fail(f"error: unexpected {type(e).__name__} in `cmimh {args.command}`: {msg} "
                 f"(a bug; {where})", 1)


if __name__ == "__main__":
    sys.exit(main())
