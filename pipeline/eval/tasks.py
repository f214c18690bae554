"""The four retrieval tasks of the paper, in one place: their names (keys of metrics.json), their
labels in tables and titles in plots, and which codes of a ``codes.h5`` each ranks against which."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str      # the key in metrics.json
    label: str     # in tables
    title: str     # in plots
    query: str     # the codes.h5 dataset of the queries
    database: str  # the codes.h5 dataset ranked


TASKS: tuple[Task, ...] = (
    Task("i2t", "Img→Txt", "Image → Text", "query_image", "db_text"),
    Task("t2i", "Txt→Img", "Text → Image", "query_text", "db_image"),
    Task("i2i", "Img→Img", "Image → Image", "query_image", "db_image"),
    Task("t2t", "Txt→Txt", "Text → Text", "query_text", "db_text"),
)
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
CROSS_MODAL: tuple[Task, ...] = TASKS[:2]

#: The headline number of a collection without labels: the paired mAP (mean reciprocal rank of
#: the own pair) of the cross-modal tasks (:mod:`pipeline.eval.paired`).
PAIRED_KEY = "pair_map"


def tasks_for(key: str) -> tuple[Task, ...]:
    """The tasks a metrics.json key has: the four of a label-based metric, the two cross-modal ones
    of the paired metric."""
    return CROSS_MODAL if key == PAIRED_KEY else TASKS


def headline_key(metrics: dict, k: int) -> str:
    """``map@k`` when the run was evaluated with labels, else the paired mAP's key."""
    return f"map@{k}" if f"map@{k}" in metrics or PAIRED_KEY not in metrics else PAIRED_KEY


def metric_label(key: str) -> str:
    """How a headline key is named in tables and plots."""
    return "paired mAP (mean reciprocal rank of the own pair)" if key == PAIRED_KEY else key.replace("map", "mAP")
