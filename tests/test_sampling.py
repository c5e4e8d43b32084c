"""The method's invariants (Eq. 1-3, Fig. 4/5/7) and the policies' decision rules."""

import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dyntrain.sampling import NEW, NONE, TYPE_I, TYPE_II, Decision, make_policy, resample

NAMES = ("full", "static", "dynamic", "variant", "random")
FAST = settings(max_examples=60, deadline=None)
TOTAL = 200  # validation images in the property tests: delta = 0.01 is 2 of them


def policy(name, n=100, alpha=30, beta=0.4, delta=0.01, gamma=0.97, seed=0):
    return make_policy(name, n, alpha, beta, delta, gamma, seed)


def is_subset(a, n, alpha):
    return len(a) == alpha and a.dtype == np.int64 and len(np.unique(a)) == alpha and a.min() >= 0 and a.max() < n


@st.composite
def resample_case(draw):
    n = draw(st.integers(2, 200))
    alpha = draw(st.integers(1, n - 1))
    beta = draw(st.floats(0.0, 1.0))
    keep = round(alpha * (1 - beta))
    if alpha - keep > n - alpha:  # B too small: clamp to the largest beta that fits
        beta = (n - alpha) / alpha
    return n, alpha, beta, draw(st.integers(0, 2**32 - 1))


@FAST
@given(resample_case())
def test_resample_keeps_round_alpha_one_minus_beta_and_draws_rest_outside(case):
    n, alpha, beta, seed = case
    rng = np.random.default_rng(seed)
    a = rng.choice(n, alpha, replace=False).astype(np.int64)
    new = resample(a, n, beta, rng)
    keep = round(alpha * (1 - beta))
    assert is_subset(new, n, alpha)
    assert np.isin(new[:keep], a).all()
    assert not np.isin(new[keep:], a).any()
    assert np.isin(new, a).sum() == keep


def test_resample_beta_edges():
    rng = np.random.default_rng(0)
    a = rng.choice(100, 30, replace=False)
    assert sorted(resample(a, 100, 0.0, rng)) == sorted(a)  # beta=0 keeps A (permuted)
    assert not np.isin(resample(a, 100, 1.0, rng), a).any()  # beta=1 replaces all of A


def test_resample_rounding_is_python_round():
    a = np.arange(5)
    # alpha*(1-beta) = 2.5 rounds half to even -> keep 2
    assert np.isin(resample(a, 20, 0.5, np.random.default_rng(0)), a).sum() == round(2.5) == 2


def test_resample_raises_when_b_too_small():
    with pytest.raises(ValueError):
        resample(np.arange(8), 10, 0.5, np.random.default_rng(0))  # needs 4 from |B| = 2
    with pytest.raises(ValueError):
        resample(np.arange(3), 10, 1.5, np.random.default_rng(0))


def run(p, counts, total=TOTAL):
    """Feed the policy p one validation count (correct of total) per epoch."""
    subsets, decisions = [], []
    for epoch, correct in enumerate(counts, start=1):
        subsets.append(p.subset.copy())
        decisions.append(p.update(epoch, correct, total))
    subsets.append(p.subset.copy())
    return subsets, decisions


counts_strategy = st.lists(st.integers(0, TOTAL), min_size=1, max_size=15)


@FAST
@given(st.sampled_from(NAMES), st.integers(20, 120), st.floats(0.0, 1.0), st.integers(0, 1000), counts_strategy)
def test_every_subset_is_alpha_distinct_indices(name, n, beta, seed, accs):
    alpha = n // 3  # leaves |B| >= alpha*beta for any beta
    subsets, decisions = run(policy(name, n=n, alpha=alpha, beta=beta, seed=seed), accs)
    for s in subsets:
        assert is_subset(s, n, n if name == "full" else alpha)
    if name == "full":
        assert all(np.array_equal(s, np.arange(n)) for s in subsets)
    if name in ("full", "static"):
        assert all(np.array_equal(s, subsets[0]) for s in subsets)
        assert decisions == [Decision(NONE, 0.0)] * len(accs)
    if name == "random":
        assert decisions == [Decision(NEW, 1.0)] * len(accs)


@FAST
@given(st.sampled_from(NAMES), st.integers(0, 1000), counts_strategy)
def test_same_seed_same_sequence(name, seed, accs):
    a = run(policy(name, seed=seed), accs)
    b = run(policy(name, seed=seed), accs)
    assert a[1] == b[1]
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))


def test_different_seeds_differ():
    assert not np.array_equal(policy("static", 1000, 100, seed=0).subset, policy("static", 1000, 100, seed=1).subset)


@FAST
@given(st.sampled_from(NAMES), st.integers(0, 1000), counts_strategy, st.data())
def test_state_dict_round_trip_continues_identically(name, seed, accs, data):
    cut = data.draw(st.integers(0, len(accs)))
    reference = run(policy(name, seed=seed), accs)
    first = policy(name, seed=seed)
    run(first, accs[:cut])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # plain data: loads without unpickling any object
    resumed = policy(name, seed=seed + 1)  # a different seed: state must win
    resumed.load_state_dict(state)
    assert resumed.epoch == cut and resumed.best_correct == first.best_correct and resumed.best_acc == first.best_acc
    subsets, decisions = [], []
    for epoch, correct in enumerate(accs[cut:], start=cut + 1):
        subsets.append(resumed.subset.copy())
        decisions.append(resumed.update(epoch, correct, TOTAL))
    assert decisions == reference[1][cut:]
    assert all(np.array_equal(x, y) for x, y in zip(subsets, reference[0][cut:-1]))
    assert np.array_equal(resumed.subset, reference[0][-1])


def test_state_dict_is_plain_data():
    p = policy("variant")
    run(p, [50, 40, 41])
    state = p.state_dict()
    assert {type(state[k]) for k in ("subset", "best_subset")} == {list}
    assert all(type(i) is int for i in state["subset"] + state["best_subset"])
    assert type(state["rng"]["state"]["state"]) is int and state["rng"]["state"]["state"] >= 2**64  # 128-bit
    pickle.loads(pickle.dumps(state))


def test_load_state_dict_rejects_other_policy():
    with pytest.raises(ValueError):
        policy("dynamic").load_state_dict(policy("variant").state_dict())


def test_update_checks_counts():
    p = policy("dynamic")
    with pytest.raises(ValueError):
        p.update(1, 11, 10)
    with pytest.raises(ValueError):
        p.update(1, 0, 0)
    p.update(1, 5, 10)
    with pytest.raises(ValueError, match="changed size"):
        p.update(2, 5, 20)
    assert (p.prior_acc, p.best_acc) == (0.5, 0.5)


def test_dynamic_resamples_type_one_when_abs_change_below_delta():
    p = policy("dynamic", 1000, 100, beta=0.3)
    #         up 0.5  up 0.005  up 0.1  flat   down 0.2  down 0.005   (of 1000, delta = 10)
    accs = [500, 505, 605, 605, 405, 400]
    subsets, decisions = run(p, accs, total=1000)
    assert [d.resample for d in decisions] == [NONE, TYPE_I, NONE, TYPE_I, NONE, TYPE_I]
    assert all(d.beta == 0.3 for d in decisions)
    for before, after, d in zip(subsets, subsets[1:], decisions):
        kept = np.isin(after, before).sum()
        assert kept == (round(100 * 0.7) if d.resample == TYPE_I else 100)


def test_variant_decision_rules_and_best_subset():
    beta0, gamma = 0.5, 0.9
    p = policy("variant", 1000, 100, beta=beta0, gamma=gamma)
    s1 = p.subset.copy()
    assert p.update(1, 500, 1000) == Decision(NONE, gamma * beta0)  # up by > delta: keep A
    assert np.array_equal(p.subset, s1)
    assert p.update(2, 400, 1000) == Decision(TYPE_I, beta0)  # down: type I of A with beta0
    s2 = p.subset.copy()
    assert np.isin(s2, s1).sum() == round(100 * (1 - beta0))
    d = p.update(3, 405, 1000)  # up by < delta: type II from A* = s1 (acc 0.5), beta = gamma**3 beta0
    assert d == Decision(TYPE_II, gamma**3 * beta0)
    keep = round(100 * (1 - gamma**3 * beta0))
    s3 = p.subset
    assert np.isin(s3, s1).sum() == keep
    assert np.isin(s3[:keep], s1).all() and not np.isin(s3[keep:], s1).any()
    assert p.best_correct == 500 and p.best_acc == 0.5 and np.array_equal(p.best_subset, s1)
    assert p.update(4, 405, 1000) == Decision(TYPE_I, beta0)  # equal counts as no gain
    s4 = p.subset.copy()
    assert p.update(5, 900, 1000) == Decision(NONE, gamma**5 * beta0)
    assert np.array_equal(p.best_subset, s4)  # A* is the subset that was just trained


def test_variant_keeps_the_all_time_best_subset_after_a_drop():
    """A* is the best so far (Eq. 2), not the set of the previous iteration (module docstring)."""
    p = policy("variant", 1000, 100, beta=0.5, gamma=0.9)
    s1 = p.subset.copy()
    assert p.update(1, 800, 1000).resample == NONE
    assert p.update(2, 500, 1000).resample == TYPE_I
    s3 = p.subset.copy()
    assert p.update(3, 505, 1000).resample == TYPE_II  # a small gain after the drop
    assert np.array_equal(p.best_subset, s1) and not np.array_equal(p.best_subset, s3)
    keep = round(100 * (1 - 0.9**3 * 0.5))
    assert np.isin(p.subset[:keep], s1).all()


# At delta = 0.01 of 10,000 validation images the threshold is 100 images. Fig. 5 resamples when
# |change| < delta (strict): 100 keeps A. Fig. 4-b keeps A only when the gain exceeds delta: 100
# resamples (type II). A drop of 100 keeps A in dynamic and resamples (type I) in variant.
@pytest.mark.parametrize("change,dynamic,variant", [
    (99, TYPE_I, TYPE_II), (100, NONE, TYPE_II), (101, NONE, NONE),
    (-99, TYPE_I, TYPE_I), (-100, NONE, TYPE_I), (-101, NONE, TYPE_I), (0, TYPE_I, TYPE_I),
])
# In floats 0.51 - 0.50 is 0.010000000000000009 and 0.41 - 0.40 is 0.009999999999999953: the
# old comparison of accuracies put the same gain of 100 on both sides of delta.
@pytest.mark.parametrize("start", [5000, 4000])
def test_decision_at_delta_boundary(change, dynamic, variant, start):
    for name, expected in (("dynamic", dynamic), ("variant", variant)):
        p = policy(name, 1000, 100, delta=0.01)
        p.update(1, start, 10_000)
        assert p.update(2, start + change, 10_000).resample == expected, (name, start, change)


def test_delta_is_the_decimal_written_not_the_binary_float():
    # 0.1 as a float is 0.1000000000000000055...; 3 more of 30 is exactly one tenth: not above delta.
    p = policy("variant", 1000, 100, delta=0.1)
    p.update(1, 10, 30)
    assert p.update(2, 13, 30).resample == TYPE_II
    p = policy("dynamic", 1000, 100, delta=0.1)
    p.update(1, 10, 30)
    assert p.update(2, 7, 30).resample == NONE  # a drop of exactly delta is not below it


def test_make_policy_validates():
    with pytest.raises(ValueError):
        policy("bogus")
    with pytest.raises(ValueError):
        policy("dynamic", alpha=101)
    with pytest.raises(ValueError, match="delta"):
        policy("dynamic", delta=float("nan"))
    assert len(policy("full", alpha=5).subset) == 100
