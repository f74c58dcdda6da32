"""Document-level splits and sampling: stable, proportional, monotone in the budget."""

from collections import Counter

import pytest

from megatron_rw.data.split import assign_split, sample_by_budget, unit_hash


FROZEN_NON_TRAIN = [13, 20, 26, 56, 58, 78]


def test_splits_are_frozen():
    # These ids must keep their split forever (across machines, Python versions and releases):
    # otherwise a re-prepared corpus silently leaks test documents into training.
    assert unit_hash("split/wikipedia/Nebula#0") == pytest.approx(0.81089290, abs=1e-8)
    assert [assign_split(f"doc{i}") for i in range(200)].count("test") == 5
    frozen = {i: assign_split(f"brown/ca{i:02d}#0") for i in range(1, 100)}
    assert [i for i, s in frozen.items() if s != "train"] == FROZEN_NON_TRAIN


def test_split_fractions_and_independence_of_context():
    ids = [f"src/doc{i}#{k}" for i in range(5000) for k in range(4)]
    counts = Counter(assign_split(i, 0.05, 0.02) for i in ids)
    assert counts["test"] / len(ids) == pytest.approx(0.02, abs=0.004)
    assert counts["val"] / len(ids) == pytest.approx(0.05, abs=0.006)
    # A document's split depends on its id only, not on which other documents exist.
    assert [assign_split(i, 0.05, 0.02) for i in ids[:50]] == [
        assign_split(i, 0.05, 0.02) for i in reversed(ids[:50])][::-1]
    with pytest.raises(ValueError):
        assign_split("x", 0.6, 0.5)


def test_sample_by_budget():
    ids = [f"d{i}" for i in range(300)]
    sizes = [100 + (i * 37) % 400 for i in range(300)]
    small = sample_by_budget(ids, sizes, 10_000)
    large = sample_by_budget(ids, sizes, 30_000)
    assert sum(sizes[i] for i in small) <= 10_000 and sum(sizes[i] for i in large) <= 30_000
    assert set(small) < set(large)  # a larger budget only adds documents
    assert small == sorted(small)  # corpus order kept
    assert min(small) < 50 and max(small) > 250  # spread over the corpus, not its head
    assert sample_by_budget(ids, sizes, None) == list(range(300))
    assert sample_by_budget(ids[::-1], sizes[::-1], 10_000) == sorted(299 - i for i in small)
