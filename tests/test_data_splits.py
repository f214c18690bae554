import numpy as np
import pytest

from pipeline.data.splits import split_indices
from pipeline.errors import PipelineError


def test_sizes_disjoint_and_train_inside_database():
    s = split_indices(100, 20, 30, seed=1)
    assert len(s["query"]) == 20 and len(s["database"]) == 80 and len(s["train"]) == 30
    assert not set(s["query"]) & set(s["database"])
    assert set(s["query"]) | set(s["database"]) == set(range(100))
    assert set(s["train"]) <= set(s["database"])
    assert all(np.all(np.diff(v) > 0) for v in s.values())  # sorted, unique


def test_same_seed_same_split_other_seed_differs():
    a, b, c = (split_indices(500, 50, 100, seed=s) for s in (7, 7, 8))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["query"], c["query"])


def test_known_values_pin_the_protocol():
    # Pinned so that a change of RNG use (which would silently change every published number) fails.
    s = split_indices(10, 3, 4, seed=0)
    rng = np.random.default_rng(0)
    perm = rng.permutation(10)
    db = np.sort(perm[3:])
    np.testing.assert_array_equal(s["query"], np.sort(perm[:3]))
    np.testing.assert_array_equal(s["train"], np.sort(rng.choice(db, size=4, replace=False)))


def test_fixed_assignment_is_kept():
    fixed = ["query", "database", "database", "query", "database"]
    s = split_indices(5, 2, 2, seed=0, fixed=fixed)
    np.testing.assert_array_equal(s["query"], [0, 3])
    np.testing.assert_array_equal(s["database"], [1, 2, 4])
    assert set(s["train"]) <= {1, 2, 4}


@pytest.mark.parametrize("args", [(0, 1, 1), (10, 0, 1), (10, 10, 1), (10, 2, 9), (10, 2, 0)])
def test_bad_sizes_raise_one_line(args):
    with pytest.raises(PipelineError) as e:
        split_indices(*args, seed=0)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- protocol splits
@pytest.mark.parametrize("n, spec, want", [
    # MGAH / UKD (Table VI): 5% of MIRFlickr-25K's 20,015 pairs (1,000.75 -> 1,001), 1% of
    # NUS-WIDE's 186,577 (1,865.77 -> 1,866); the rest is database and training set
    (20015, {"n_query": 0.05, "n_train": "database"}, {"n_query": 1001, "n_val": 0, "n_train": 19014}),
    (186577, {"n_query": 0.01, "n_train": "database"}, {"n_query": 1866, "n_val": 0, "n_train": 184711}),
    # LDR (Table VII): 1,000 queries, 1,000 validation pairs, the rest database and training set
    (20015, {"n_query": 1000, "n_val": 1000, "n_train": "database"}, {"n_query": 1000, "n_val": 1000, "n_train": 18015}),
    # CRE / FSH (Table VIII): 2,000 queries, 20,000 training pairs from the database
    (186577, {"n_query": 2000, "n_train": 20000}, {"n_query": 2000, "n_val": 0, "n_train": 20000}),
    # the demo (2,500 pairs): 5% = 125 queries fit
    (2500, {"n_query": 0.05, "n_train": "database"}, {"n_query": 125, "n_val": 0, "n_train": 2375}),
])
def test_plan_split_paper_sizes(n, spec, want):
    from pipeline.data.splits import plan_split

    assert plan_split(n, spec, 0.2) == (want, [])


def test_plan_split_shrinks_what_does_not_fit_with_notes():
    from pipeline.data.splits import plan_split

    # LDR on the demo: 1,000 + 1,000 > 0.2 x 2,500 = 500 -> x 0.25: 250 + 250, database 2,000
    sizes, notes = plan_split(2500, {"n_query": 1000, "n_val": 1000, "n_train": "database"}, 0.2)
    assert sizes == {"n_query": 250, "n_val": 250, "n_train": 2000}
    assert notes == ["2500 pairs cannot hold 1000 queries + 1000 validation pairs (at most 0.2 of the pairs are "
                     "held out): shrunk to 250 + 250"]
    # CRE / FSH on the demo: 2,000 queries -> 500; 20,000 training pairs -> the 2,000 of the database
    sizes, notes = plan_split(2500, {"n_query": 2000, "n_train": 20000}, 0.2)
    assert sizes == {"n_query": 500, "n_val": 0, "n_train": 2000}
    assert len(notes) == 2 and "n_train 20000 exceeds the database (2000 pairs)" in notes[1]
    # a data set with fixed queries (MS-COCO's val 2017) keeps them
    sizes, notes = plan_split(10000, {"n_query": 2000, "n_train": 5000}, 0.2, n_fixed_query=4952)
    assert sizes == {"n_query": 4952, "n_val": 0, "n_train": 5000} and "4952 queries" in notes[0]
    with pytest.raises(PipelineError, match="n_query is missing"):
        plan_split(100, {"n_train": 5}, 0.2)


def test_split_indices_with_validation_pairs():
    s0 = split_indices(100, 10, 50, seed=4)
    s = split_indices(100, 10, 50, seed=4, n_val=15)
    assert np.array_equal(s["query"], s0["query"])  # the validation pairs come after the queries
    assert len(s["validation"]) == 15 and len(s["database"]) == 75 and len(s["train"]) == 50
    assert not np.intersect1d(s["validation"], np.concatenate([s["query"], s["database"]])).size
    assert np.isin(s["train"], s["database"]).all()
    assert sorted(np.concatenate([s["query"], s["validation"], s["database"]]).tolist()) == list(range(100))
    assert "validation" not in s0
    # a fixed query/database assignment: validation drawn from its database
    fixed = ["query"] * 10 + ["database"] * 90
    f = split_indices(100, 10, 20, seed=1, fixed=fixed, n_val=5)
    assert np.array_equal(f["query"], np.arange(10)) and len(f["validation"]) == 5 and f["validation"].min() >= 10
    with pytest.raises(PipelineError, match="n_val=90"):
        split_indices(100, 10, 5, seed=0, n_val=90)
