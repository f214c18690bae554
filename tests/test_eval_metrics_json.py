"""metrics.json's one reader: what the report and the studies accept."""

import json

import pytest

from pipeline.errors import PipelineError
from pipeline.eval.metrics_json import read_metrics

FOUR = {"i2t": 0.5, "t2i": 0.4, "i2i": 0.6, "t2t": 0.7}


def _write(tmp_path, m):
    p = tmp_path / "metrics.json"
    p.write_text(json.dumps(m))
    return p


def test_a_labelled_run_is_read_by_its_map_key(tmp_path):
    p = _write(tmp_path, {"map@1000": FOUR, "pair_map": {"i2t": 0.2, "t2i": 0.3}})
    assert read_metrics(p, "map@1000")["map@1000"] == FOUR
    with pytest.raises(PipelineError, match=r"no map@50 \(evaluated with another --k\? its mAP keys: map@1000\)"):
        read_metrics(p, "map@50")


def test_a_run_without_labels_is_read_by_its_paired_map(tmp_path):
    """Only paired metrics (a collection without labels): the report reads the paired mAP, which
    must hold both cross-modal tasks; it is not 'no map@1000'."""
    ok = {"pair_map": {"i2t": 0.2, "t2i": 0.3}}
    assert read_metrics(_write(tmp_path, ok), "map@1000") == ok
    with pytest.raises(PipelineError, match=r"pair_map must hold a value for every task \(i2t, t2i\)"):
        read_metrics(_write(tmp_path, {"pair_map": {"i2t": 0.2}}), "map@1000")
    with pytest.raises(PipelineError, match=r"pair_map.t2i = 1.5 is not a number between 0 and 1"):
        read_metrics(_write(tmp_path, {"pair_map": {"i2t": 0.2, "t2i": 1.5}}), "map@1000")
