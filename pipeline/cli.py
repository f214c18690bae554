"""The ``cmimh`` command: it parses arguments and calls one stage (:mod:`pipeline.stages`).

Each subcommand is a stage and runs by hand exactly as its Snakemake rule runs it: settings
from ``--config config.yaml [--dataset NAME]`` (resolved by :func:`pipeline.stages.resolve`),
or already resolved with ``--settings JSON``. Errors a user can cause print one line
(``cmimh: error: ...``) and exit with status 2; an unexpected error prints one line too, with
its traceback in the ``--log`` file.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import warnings
from pathlib import Path
from typing import Iterator

from pipeline.errors import PipelineError

log = logging.getLogger("cmimh")

#: The longest code (bits) a model is trained for: the schema's code_lengths maximum.
MAX_BITS = 1024


def _settings_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (one of)")
    g.add_argument("--config", help="a config.yaml to resolve the settings from (default: the repo's)")
    g.add_argument("--dataset", help="with --config: the data set (default: the config's)")
    g.add_argument("--settings", help="the stage's settings, already resolved, as JSON")


def _text_precision(q) -> None:
    q.add_argument("--text-precision", choices=["fp32", "bf16"], default=None,
                   help="the sentence encoder's arithmetic for text queries (default: as its index records; "
                        "bf16 is ~2x faster on a CPU with bf16 units, and changes a few query codes by a bit "
                        "when the index's texts were encoded in fp32)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch and BLAS (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log", help="also write the whole log (every message, and the traceback of an unexpected "
                                 "error) to this file; the console keeps warnings and the one-line error")


def _s(a, stage: str, method: str | None = None, split: str | None = None) -> dict:
    from pipeline.stages import settings_from_args

    s = settings_from_args(a, stage, method, split)
    if method is not None:  # resolved --settings JSON may leave the method to --method
        s.setdefault("method", method)
        if s["method"] != method:
            raise PipelineError(f"--method {method} differs from the method of --settings ({s['method']})")
    return s


def _path(v: str | None) -> Path | None:
    return Path(v) if v else None


# ----------------------------------------------------------------------------- subcommands
def cmd_prepare(a) -> None:
    from pipeline.stages import prepare

    prepare.run(_s(a, "prepare"), Path(a.output), progress=not a.no_progress)


def cmd_extract(a) -> None:
    from pipeline.stages import extract

    out, progress = Path(a.output), not a.no_progress
    if a.part == "merge":  # reads only the shard files (and the manifest, to check their ids)
        if not a.parts:
            raise PipelineError("extract merge: give the shard files with --parts")
        extract.run_merge([Path(p) for p in a.parts], out, _path(a.manifest), progress=progress)
        return
    if (a.shard is None) != (a.shards is None) or (a.shard is not None and a.part != "image"):
        raise PipelineError("--shard I and --shards N go together, with extract image")
    if not a.manifest:
        raise PipelineError(f"extract {a.part}: --manifest is required")
    if a.part == "assemble":
        if not (a.image and a.text):
            raise PipelineError("extract assemble: --image and --text are required")
        extract.run_assemble(Path(a.manifest), Path(a.image), Path(a.text), _s(a, "extract"), out)
        return
    from pipeline.torchkit import resolve_device

    s = _s(a, "extract_image" if a.part == "image" else "extract_text")
    if a.part == "image":
        extract.run_image(Path(a.manifest), s, out, resolve_device(s["device"]), progress=progress,
                          shard=None if a.shard is None else (a.shard, a.shards))
    else:
        extract.run_text(Path(a.manifest), s, out, resolve_device(s["device"]), progress=progress)


def cmd_import(a) -> None:
    from pipeline.stages import extract

    s = _s(a, "import_features") if (a.settings or a.config or a.dataset) else {"dataset": "imported", "seed": 0}
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
    from pipeline.stages import train

    if not 1 <= a.bits <= MAX_BITS:
        raise PipelineError(f"code length (--bits) must be between 1 and {MAX_BITS}, not {a.bits}")
    train.run(_s(a, "train", a.method), Path(a.features), a.bits, Path(a.output), tuned=_path(a.tuned),
              log_csv=_path(a.log_csv), plot=_path(a.plot), progress=not a.no_progress)


def cmd_encode(a) -> None:
    from pipeline.stages import encode

    method = a.method
    if method is None:  # the method of --settings when it names one, else cmimh
        method = (_s(a, "encode").get("method") if getattr(a, "settings", None) else None) or "cmimh"
    encode.run(_s(a, "encode", method), Path(a.model), Path(a.features), Path(a.output), index_dir=_path(a.index),
               manifest=_path(a.manifest))


def cmd_evaluate(a) -> None:
    from pipeline.stages import evaluate

    evaluate.run(Path(a.codes), Path(a.output), k=a.k, n_threads=a.threads or os.cpu_count() or 1,
                 chance_file=_path(a.chance))


def cmd_chance(a) -> None:
    from pipeline.stages import evaluate

    s = _s(a, "chance", split=a.split)
    if a.split is not None and s.get("split") != a.split:
        raise PipelineError(f"--split {a.split} differs from the split of --settings ({s.get('split')})")
    evaluate.run_chance(s, Path(a.features), a.bits, Path(a.output), n_threads=a.threads or os.cpu_count() or 1)


def cmd_report(a) -> None:
    from pipeline.stages import report

    if a.k is not None and a.k < 1:
        raise PipelineError(f"--k must be >= 1, not {a.k}")
    bad = next((b for b in a.bits or [] if not 1 <= b <= MAX_BITS), None)
    if bad is not None:
        raise PipelineError(f"--bits: a code length is between 1 and {MAX_BITS}, not {bad}")
    s = _s(a, "report")
    report.run(Path(a.results), s["dataset"], [int(b) for b in (a.bits or s["code_lengths"])],
               a.methods or s["methods"], Path(a.output), k=a.k or s["eval_k"],
               include=[Path(a.results) / "studies" / f"{n}.md" for n in s["studies"]], html=_path(a.html))


def cmd_study(a) -> None:
    from pipeline.stages import study

    if a.k is not None and a.k < 1:
        raise PipelineError(f"--k must be >= 1, not {a.k}")
    study.run(a.name, _s(a, "study"), Path(a.results), Path(a.output), _path(a.plot), k=a.k)


def cmd_protocol(a) -> None:
    from pipeline.stages import protocol

    protocol.run(a.name, _s(a, "protocol", a.name), Path(a.results), Path(a.output), _path(a.plot),
                 features=_path(a.features))


def cmd_tune(a) -> None:
    from pipeline.stages import tune

    tune.run(_s(a, "tune"), Path(a.results), Path(a.output), _path(a.table), _path(a.plot))


def cmd_search(a) -> None:
    from pipeline.stages import search

    search.run(Path(a.index), text=a.text, image=a.image, queries=_path(a.queries), k=a.k, target=a.target,
               backend=a.backend, n_threads=a.threads, text_precision=a.text_precision)


def cmd_serve(a) -> None:
    from pipeline.stages import serve

    serve.run([Path(p) for p in a.index], host=a.host, port=a.port, device=a.device, max_upload_mb=a.max_upload_mb,
              threads=a.threads, workers=a.workers, text_precision=a.text_precision)


def cmd_methods(a) -> None:
    """Every method and its settings: name, default and what it does (from each method's Config)."""
    from pipeline.methods import REGISTRY, method_help

    for name, cls in REGISTRY.items():
        print(f"{name}: {(cls.__doc__ or '').strip().splitlines()[0]}")
        for key, default, doc in cls.Config.describe():
            print(f"  {key} = {default!r}: {doc}")
    print(method_help())


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand. ``command``: the subcommand about to run, when known; the
    study names (which import every method, ~1 s) are then looked up only for ``study`` and help."""
    if command in (None, "study") or command.startswith("-"):
        from pipeline.report.studies import PAPER_STUDIES
    else:
        PAPER_STUDIES = None  # noqa: N806 - not this command's

    p = argparse.ArgumentParser(prog="cmimh", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prepare", help="download/generate and filter a data set into its raw on-disk form")
    _settings_args(q); _common(q)
    q.add_argument("-o", "--output", required=True, help="data/{dataset}/manifest.jsonl")
    q.set_defaults(fn=cmd_prepare)

    q = sub.add_parser("extract", help="image/text features -> features.h5")
    q.add_argument("part", choices=["image", "merge", "text", "assemble"],
                   help="image: image features (all, or one --shard of --shards); merge: shard files -> image.h5; "
                        "text; assemble: PCA, splits -> features.h5 (your own features: cmimh import)")
    _settings_args(q); _common(q)
    q.add_argument("--manifest", help="data/{dataset}/manifest.jsonl (image, text, assemble; merge: to check ids)")
    q.add_argument("--shard", type=int, help="image: extract shard I (0-based) of --shards N, a contiguous row range")
    q.add_argument("--shards", type=int, help="image: the number of shards")
    q.add_argument("--parts", nargs="+", help="merge: the shard files")
    q.add_argument("--image", "--fc7", dest="image", help="assemble: the image part's output (image.h5)")
    q.add_argument("--text", help="assemble: the text part's output")
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
    q.add_argument("--method", default="cmimh", help="a method name with its variants (cmimh methods lists them)")
    q.add_argument("--log-csv", help="per-epoch (or per-iteration) history (CSV)")
    q.add_argument("--plot", help="what the method optimises, per epoch (PNG)")
    q.add_argument("--tuned", help="results/{dataset}/tune/{method}.json: the tune target's choice "
                                   "(for a method ending in -tuned)")
    q.add_argument("-o", "--output", required=True, help="model.pt")
    q.set_defaults(fn=cmd_train)

    q = sub.add_parser("encode", help="hash codes of queries and database -> codes.h5 (+ index)")
    _settings_args(q); _common(q)
    q.add_argument("--model", required=True)
    q.add_argument("--features", required=True)
    q.add_argument("--method", help="the run's method name (a -val<k> run encodes its validation fold); "
                                    "default: the method of --settings, else cmimh")
    q.add_argument("--index", help="also write a searchable index folder here")
    q.add_argument("--manifest", help="with --index: the data set's manifest.jsonl, so that the index holds each "
                                      "item's caption and image (what `cmimh serve` shows)")
    q.add_argument("-o", "--output", required=True, help="codes.h5")
    q.set_defaults(fn=cmd_encode)

    q = sub.add_parser("evaluate", help="retrieval metrics of any codes.h5")
    q.add_argument("codes")
    q.add_argument("-o", "--output", required=True, help="metrics.json")
    q.add_argument("--k", type=int, default=1000, help="cut-off of the main mAP (default 1000)")
    q.add_argument("--chance", help="the chance level computed once for this split and code length (cmimh chance; "
                                    "checked to fit the codes); default: computed here")
    _common(q)
    q.set_defaults(fn=cmd_evaluate)

    q = sub.add_parser("chance", help="the chance level (random codes) of a split and code length, once for all "
                                      "methods -> chance.json (cmimh evaluate --chance)")
    _settings_args(q); _common(q)
    q.add_argument("--features", required=True, help="results/{dataset}/features.h5")
    q.add_argument("--bits", type=int, required=True)
    q.add_argument("--split", default=None, help="test (default: the queries and database) or val<k> (a -val<k> "
                                                 "run's validation fold)")
    q.add_argument("-o", "--output", required=True, help="results/{dataset}/chance/{split}/{bits}.json")
    q.set_defaults(fn=cmd_chance)

    q = sub.add_parser("report", help="tables and plots over code lengths and methods")
    _settings_args(q); _common(q)
    q.add_argument("--results", required=True, help="results/{dataset}")
    q.add_argument("--bits", nargs="+", type=int, help="code lengths (default: the config's code_lengths)")
    q.add_argument("--methods", nargs="+", help="methods (default: the config's methods)")
    q.add_argument("--k", type=int, default=None, help="mAP cut-off (default: the config's eval_k)")
    q.add_argument("--html", help="also write the report as one self-contained HTML page (tables and plots)")
    q.add_argument("-o", "--output", required=True, help="report.md")
    q.set_defaults(fn=cmd_report)

    q = sub.add_parser("study", help="one of the paper's studies as a Markdown table and a plot")
    q.add_argument("name", choices=PAPER_STUDIES)
    _settings_args(q); _common(q)
    q.add_argument("--results", required=True, help="results/{dataset}")
    q.add_argument("--k", type=int, default=None, help="mAP cut-off (default: the settings' eval_k)")
    q.add_argument("--plot", help="the study's plot (PNG)")
    q.add_argument("-o", "--output", required=True, help="results/{dataset}/studies/NAME.md")
    q.set_defaults(fn=cmd_study)

    q = sub.add_parser("protocol", help="one of the paper's protocol studies (Tables V-VIII, Figures 4-5): "
                                        "tables with the reported numbers, and a plot")
    q.add_argument("name", choices=["udcmh", "mgah", "ldr", "handcrafted", "curves"])
    _settings_args(q); _common(q)
    q.add_argument("--results", required=True, help="the results folder (results/): the runs are in "
                                                    "results/{dataset}@{protocol}/ or results/{dataset}/")
    q.add_argument("--features", help="the protocol tree's features.h5 (its provenance's protocol notes)")
    q.add_argument("--plot", help="the study's plot (PNG)")
    q.add_argument("-o", "--output", required=True, help="results/{dataset}/studies/NAME.md")
    q.set_defaults(fn=cmd_protocol)

    q = sub.add_parser("tune", help="choose each method's settings from its grid points' validation runs")
    _settings_args(q); _common(q)
    q.add_argument("--results", required=True, help="results/{dataset} (the -val<k> runs)")
    q.add_argument("--table", help="studies/tune.md")
    q.add_argument("--plot", help="studies/tune.png")
    q.add_argument("-o", "--output", required=True, help="the folder of the choices: results/{dataset}/tune")
    q.set_defaults(fn=cmd_tune)

    q = sub.add_parser("search", help="query an index with a text or an image")
    q.add_argument("index", help="results/{dataset}/{method}/{bits}/index")
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--text")
    g.add_argument("--image")
    g.add_argument("--queries", help="a batch: a file of queries, one text a line, or JSON lines {\"text\": ...} / "
                                     "{\"image\": PATH}; one JSON line of hits per query")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--backend", choices=["exact", "faiss", "faiss-hash"], default="exact",
                   help="exact NumPy ranking (default); faiss IndexBinaryFlat (exact, same results); "
                        "faiss-hash IndexBinaryHash (approximate; needs pip install faiss-cpu)")
    q.add_argument("--target", choices=["image", "text"], default=None,
                   help="search database images or texts (default: the other modality)")
    _text_precision(q)
    _common(q)
    q.set_defaults(fn=cmd_search)

    q = sub.add_parser("serve", help="serve indexes over HTTP: a JSON search API and a search page")
    q.add_argument("index", nargs="+", help="index folders (results/{dataset}/{method}/{bits}/index)")
    q.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    q.add_argument("--port", type=int, default=8000)
    q.add_argument("--device", default="cpu", help="where the query encoders run (default cpu)")
    q.add_argument("--max-upload-mb", type=float, default=8.0, help="largest image upload (default 8 MB)")
    q.add_argument("--workers", type=int, default=None,
                   help="encoder threads per index, each batching the queries waiting (default: one per core, at most 4)")
    _text_precision(q)
    _common(q)
    q.set_defaults(fn=cmd_serve)

    q = sub.add_parser("methods", help="list the methods, their settings and the method-name variants")
    _common(q)
    q.set_defaults(fn=cmd_methods)
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
    old_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    logging.captureWarnings(True)
    try:
        yield root
    finally:
        logging.captureWarnings(False)
        warnings.formatwarning = old_format
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(old_level)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as one log line (its category and message; not the source line that raised it)."""
    return f"{category.__name__}: {str(message).strip()}"


def _fail(message: str, status: int) -> int:
    """The one line a person sees on the console (and, through the log handlers, in the log file)."""
    log.error("%s", message, extra={"console": False})
    print(f"cmimh: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand. Exit status 0, 2 for a user error (one line ``cmimh: error: ...`` on
    stderr), 1 for an unexpected error (one line; its traceback goes to the ``--log`` file, or to
    the console with ``-v``), 130 when interrupted."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((x for x in argv if not x.startswith("-")), None)
    args = build_parser(command if command and "-h" not in argv and "--help" not in argv else None).parse_args(argv)
    args.log = getattr(args, "log", None)
    args.blas_capped = False
    if getattr(args, "threads", None) and args.threads > 0 and "numpy" not in sys.modules:
        # before NumPy loads: OpenBLAS starts one thread per core at import (80 ms of a demo
        # evaluate on a busy 2-core machine); threadpool_limits in _run caps them only afterwards
        args.blas_capped = os.environ.setdefault("OPENBLAS_NUM_THREADS", str(args.threads)) == str(args.threads)
    try:
        cm = _logging(args)
        cm.__enter__()
    except PipelineError as e:
        print(f"cmimh: error: {e}", file=sys.stderr)
        return 2
    old_term, old_hook = _terminate_as_exception(), sys.unraisablehook
    try:
        return _run(args)
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


def _run(args) -> int:
    limits = contextlib.nullcontext()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if getattr(args, "threads", None):
            if args.command in ("train", "encode", "search", "serve") or (
                    args.command == "extract" and args.part in ("image", "text")):  # merge, assemble: no torch
                import torch

                torch.set_num_threads(max(1, args.threads))
            # numpy/scipy BLAS too (the linear methods, PCA): jobs running side by side must not
            # each start one BLAS thread per core (measured 10-20x slower when oversubscribed).
            # evaluate and chance use NumPy's OpenBLAS only, capped in main() before it loaded
            # (threadpoolctl's import and library scan are 30 ms of a demo evaluate).
            if not (getattr(args, "blas_capped", False) and args.command in ("evaluate", "chance")):
                from threadpoolctl import threadpool_limits  # installed with scikit-learn

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
        if getattr(args, name, None) and not (args.command == "tune" and name == "output"):
            check_output_path(getattr(args, name))
    if args.command == "tune" and args.output:  # tune's -o is the folder of the choices
        check_output_path(args.output, folder=True)
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
