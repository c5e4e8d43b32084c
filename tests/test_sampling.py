"""The method's invariants (Eq. 1-3, Fig. 4/5/7) and the policies' decision rules."""

import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dyntrain.sampling import NEW, NONE, TYPE_I, TYPE_II, Decision, make_policy, resample

NAMES = ("full", "static", "dynamic", "variant", "random")
FAST = settings(max_examples=60, deadline=None)


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


def run(policy, accs):
    subsets, decisions = [], []
    for epoch, acc in enumerate(accs, start=1):
        subsets.append(policy.subset.copy())
        decisions.append(policy.update(epoch, acc))
    subsets.append(policy.subset.copy())
    return subsets, decisions


accs_strategy = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=15)


@FAST
@given(st.sampled_from(NAMES), st.integers(20, 120), st.floats(0.0, 1.0), st.integers(0, 1000), accs_strategy)
def test_every_subset_is_alpha_distinct_indices(name, n, beta, seed, accs):
    alpha = n // 3  # leaves |B| >= alpha*beta for any beta
    policy = make_policy(name, n, alpha, beta, 0.01, 0.97, seed)
    subsets, decisions = run(policy, accs)
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
@given(st.sampled_from(NAMES), st.integers(0, 1000), accs_strategy)
def test_same_seed_same_sequence(name, seed, accs):
    a = run(make_policy(name, 100, 30, 0.4, 0.01, 0.97, seed), accs)
    b = run(make_policy(name, 100, 30, 0.4, 0.01, 0.97, seed), accs)
    assert a[1] == b[1]
    assert all(np.array_equal(x, y) for x, y in zip(a[0], b[0]))


def test_different_seeds_differ():
    assert not np.array_equal(make_policy("static", 1000, 100, 0.5, 0.01, 0.97, 0).subset,
                              make_policy("static", 1000, 100, 0.5, 0.01, 0.97, 1).subset)


@FAST
@given(st.sampled_from(NAMES), st.integers(0, 1000), accs_strategy, st.data())
def test_state_dict_round_trip_continues_identically(name, seed, accs, data):
    cut = data.draw(st.integers(0, len(accs)))
    reference = run(make_policy(name, 100, 30, 0.4, 0.01, 0.97, seed), accs)
    first = make_policy(name, 100, 30, 0.4, 0.01, 0.97, seed)
    run(first, accs[:cut])
    state = pickle.loads(pickle.dumps(first.state_dict()))
    resumed = make_policy(name, 100, 30, 0.4, 0.01, 0.97, seed + 1)  # a different seed: state must win
    resumed.load_state_dict(state)
    assert resumed.epoch == cut and resumed.best_acc == first.best_acc
    subsets, decisions = [], []
    for epoch, acc in enumerate(accs[cut:], start=cut + 1):
        subsets.append(resumed.subset.copy())
        decisions.append(resumed.update(epoch, acc))
    assert decisions == reference[1][cut:]
    assert all(np.array_equal(x, y) for x, y in zip(subsets, reference[0][cut:-1]))
    assert np.array_equal(resumed.subset, reference[0][-1])


def test_load_state_dict_rejects_other_policy():
    with pytest.raises(ValueError):
        make_policy("dynamic", 100, 30, 0.4, 0.01, 0.97, 0).load_state_dict(
            make_policy("variant", 100, 30, 0.4, 0.01, 0.97, 0).state_dict())


def test_dynamic_resamples_type_one_when_abs_change_below_delta():
    policy = make_policy("dynamic", 1000, 100, 0.3, 0.01, 0.97, 0)
    #          up 0.5  up 0.005  up 0.1  flat   down 0.2  down 0.005
    accs = [0.5, 0.505, 0.605, 0.605, 0.405, 0.4]
    subsets, decisions = run(policy, accs)
    assert [d.resample for d in decisions] == [NONE, TYPE_I, NONE, TYPE_I, NONE, TYPE_I]
    assert all(d.beta == 0.3 for d in decisions)
    for before, after, d in zip(subsets, subsets[1:], decisions):
        kept = np.isin(after, before).sum()
        assert kept == (round(100 * 0.7) if d.resample == TYPE_I else 100)


def test_variant_decision_rules_and_best_subset():
    beta0, gamma = 0.5, 0.9
    policy = make_policy("variant", 1000, 100, beta0, 0.01, gamma, 0)
    s1 = policy.subset.copy()
    assert policy.update(1, 0.5) == Decision(NONE, gamma * beta0)  # up by >= delta: keep A
    assert np.array_equal(policy.subset, s1)
    assert policy.update(2, 0.4) == Decision(TYPE_I, beta0)  # down: type I of A with beta0
    s2 = policy.subset.copy()
    assert np.isin(s2, s1).sum() == round(100 * (1 - beta0))
    d = policy.update(3, 0.405)  # up by < delta: type II from A* = s1 (acc 0.5), beta = gamma**3 beta0
    assert d == Decision(TYPE_II, gamma**3 * beta0)
    keep = round(100 * (1 - gamma**3 * beta0))
    s3 = policy.subset
    assert np.isin(s3, s1).sum() == keep
    assert np.isin(s3[:keep], s1).all() and not np.isin(s3[keep:], s1).any()
    assert policy.best_acc == 0.5 and np.array_equal(policy.best_subset, s1)
    assert policy.update(4, 0.405) == Decision(TYPE_I, beta0)  # equal counts as no gain
    s4 = policy.subset.copy()
    assert policy.update(5, 0.9) == Decision(NONE, gamma**5 * beta0)
    assert np.array_equal(policy.best_subset, s4)  # A* is the subset that was just trained


def test_make_policy_validates():
    with pytest.raises(ValueError):
        make_policy("bogus", 100, 30, 0.4, 0.01, 0.97, 0)
    with pytest.raises(ValueError):
        make_policy("dynamic", 100, 101, 0.4, 0.01, 0.97, 0)
    assert len(make_policy("full", 100, 5, 0.4, 0.01, 0.97, 0).subset) == 100
