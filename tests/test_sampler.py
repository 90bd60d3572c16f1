"""Sampler tests on hand-made distributions: each filter's kept set, the drawn distribution, seeding,
penalties, validation — checked against a plain full-sort re-implementation of llama.cpp's chain."""

from __future__ import annotations

import time

import numpy as np
import pytest

from rocmforge_core.errors import BadInputError
from rocmforge_core.sampler import (
    Sampler,
    SamplingParams,
    apply_penalties,
    candidate_probs,
    min_p_mask,
    top_k_candidates,
    top_p_mask,
)

# Filters off, so a test can switch on exactly one of them.
PLAIN = dict(top_k=0, top_p=1.0, min_p=0.0, temperature=1.0)


def logits_of(probs, vocab: int | None = None, seed: int = 0) -> np.ndarray:
    """Logits whose softmax is `probs` on a shuffled set of ids; other ids (if any) get ~zero mass."""
    probs = np.asarray(probs, dtype=np.float64)
    vocab = vocab or len(probs)
    out = np.full(vocab, -60.0, dtype=np.float32)
    ids = np.random.default_rng(seed).permutation(vocab)[: len(probs)]
    out[ids] = np.log(probs)
    return out, ids


def support(sampler: Sampler, logits: np.ndarray, n: int = 3000) -> set[int]:
    rows = np.broadcast_to(logits, (n, logits.shape[0]))
    return set(sampler.sample_batch(rows, [[]] * n).tolist())


def reference_probs(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """llama.cpp's chain written the slow, obvious way: full sort, loops, float64. -> probs (V,)"""
    x = logits.astype(np.float64)
    order = sorted(range(len(x)), key=lambda i: (-x[i], i))
    if p.top_k > 0:
        order = order[: p.top_k]
    if p.top_p < 1.0:
        q = np.exp(x[order] - x[order[0]])
        q /= q.sum()
        cum, cut = 0.0, len(order)
        for j, qj in enumerate(q):
            cum += qj
            if cum >= p.top_p:
                cut = j + 1
                break
        order = order[:cut]
    if p.min_p > 0:
        order = [i for i in order if np.exp(x[i] - x[order[0]]) >= p.min_p]
    out = np.zeros(len(x))
    w = np.exp((x[order] - x[order[0]]) / p.temperature)
    out[order] = w / w.sum()
    return out


def dense(ids: np.ndarray, probs: np.ndarray, vocab: int) -> np.ndarray:
    out = np.zeros(vocab)
    np.add.at(out, ids, probs)
    return out


# ---- params ---------------------------------------------------------------------------------------


def test_defaults_are_llama_cpp_defaults():
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.seed) == (1.0, 64, None)
    assert (p.frequency_penalty, p.presence_penalty) == (0.0, 0.0)
    assert p.validate() is p


@pytest.mark.parametrize("field,value,needle", [
    ("temperature", -1, "--temperature must be >= 0 (got -1"),
    ("temperature", float("nan"), "--temperature must be >= 0 (got nan"),
    ("temperature", float("inf"), "--temperature must be a finite number (got inf)"),
    ("top_p", 0.0, "--top-p must be in (0, 1] (got 0)"),
    ("top_p", 1.5, "--top-p must be in (0, 1] (got 1.5)"),
    ("top_p", -0.1, "--top-p must be in (0, 1] (got -0.1)"),
    ("min_p", -0.01, "--min-p must be in [0, 1] (got -0.01)"),
    ("min_p", 1.01, "--min-p must be in [0, 1] (got 1.01)"),
    ("top_k", -1, "--top-k must be >= 0 (got -1"),
    ("repeat_penalty", 0.0, "--repeat-penalty must be > 0 (got 0"),
    ("repeat_penalty", -1.0, "--repeat-penalty must be > 0 (got -1"),
    ("repeat_last_n", -2, "--repeat-last-n must be >= -1 (got -2"),
    ("seed", -5, "--seed must be >= 0 (got -5"),
    ("presence_penalty", float("nan"), "presence_penalty must be a finite number"),
])
def test_validation_names_the_flag(field, value, needle):
    with pytest.raises(BadInputError) as info:
        SamplingParams(**{field: value}).validate()
    assert needle in info.value.one_line()
    assert "\n" not in info.value.one_line()
    assert info.value.exit_code == 2
    with pytest.raises(BadInputError):  # the sampler refuses them too
        Sampler(SamplingParams(**{field: value}))


@pytest.mark.parametrize("kw", [dict(temperature=0), dict(top_p=1.0), dict(min_p=0.0), dict(min_p=1.0),
                                dict(top_k=0), dict(repeat_last_n=-1), dict(repeat_last_n=0),
                                dict(seed=0), dict(seed=-1)])
def test_boundary_values_are_accepted(kw):
    SamplingParams(**kw).validate()


# ---- greedy ---------------------------------------------------------------------------------------


def test_greedy_picks_the_argmax():
    rng = np.random.default_rng(1)
    s = Sampler(SamplingParams(temperature=0, seed=3))
    for _ in range(50):
        logits = rng.standard_normal(1000).astype(np.float32) * 4
        assert s.sample(logits, []) == int(np.argmax(logits))


def test_greedy_ties_go_to_the_lowest_id():
    logits = np.array([0.0, 5.0, 1.0, 5.0, 5.0], dtype=np.float32)
    assert Sampler(SamplingParams(temperature=0)).sample(logits, []) == 1
    assert Sampler(SamplingParams(temperature=-0.0)).sample(logits, []) == 1


def test_top_k_1_is_greedy():
    rng = np.random.default_rng(2)
    s = Sampler(SamplingParams(top_k=1, temperature=1.5, seed=4))
    for _ in range(50):
        logits = rng.standard_normal(5000).astype(np.float32)
        assert s.sample(logits, []) == int(np.argmax(logits))


# ---- each filter alone: kept set by sampling and by direct call -------------------------------------

PROBS = [0.40, 0.25, 0.15, 0.10, 0.06, 0.04]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_support(k):
    logits, ids = logits_of(PROBS, vocab=500)
    s = Sampler(SamplingParams(**{**PLAIN, "top_k": k}, seed=k))
    assert support(s, logits) == set(ids[:k].tolist())


@pytest.mark.parametrize("p,kept", [(0.3, 1), (0.6, 2), (0.75, 3), (0.85, 4), (0.93, 5), (0.99, 6)])
def test_top_p_support(p, kept):
    logits, ids = logits_of(PROBS, vocab=300, seed=5)
    logits[np.setdiff1d(np.arange(300), ids)] = -np.inf  # exactly PROBS, no tail mass
    s = Sampler(SamplingParams(**{**PLAIN, "top_p": p}, seed=6))
    assert support(s, logits) == set(ids[:kept].tolist())


@pytest.mark.parametrize("m,kept", [(0.05, 6), (0.12, 5), (0.2, 4), (0.3, 3), (0.5, 2), (0.9, 1)])
def test_min_p_support(m, kept):
    logits, ids = logits_of(PROBS, vocab=400, seed=7)
    s = Sampler(SamplingParams(**{**PLAIN, "min_p": m}, seed=8))
    assert support(s, logits) == set(ids[:kept].tolist())


def test_top_k_candidates_direct():
    logits = np.array([[0.5, 3.0, -1.0, 2.0, 3.0, 0.0]], dtype=np.float32)
    ids, vals = top_k_candidates(logits, 3)
    assert ids.tolist() == [[1, 4, 3]]  # best first; the tie 1/4 in id order
    assert vals.tolist() == [[3.0, 3.0, 2.0]]
    ids, _ = top_k_candidates(logits, 0)  # off: everything, sorted
    assert ids.tolist() == [[1, 4, 3, 0, 5, 2]]
    ids, _ = top_k_candidates(logits, 100)
    assert ids.tolist() == [[1, 4, 3, 0, 5, 2]]


def test_top_k_ties_at_the_cut_go_to_the_lowest_ids():
    """Logits equal to the k-th best: the lowest ids among them are kept (argpartition alone keeps
    any), so top_k = 1 equals greedy's argmax on ties too."""
    rng = np.random.default_rng(9)
    logits = rng.standard_normal((2, 3000)).astype(np.float32)
    tied = rng.choice(3000, 50, replace=False)
    logits[:, tied] = 10.0
    logits[1, 7] = 11.0  # row 1: one above the tie, then 39 of the 50
    ids, _ = top_k_candidates(logits, 40)
    assert ids[0].tolist() == sorted(tied)[:40]
    assert ids[1].tolist() == [7] + sorted(tied)[:39]
    assert Sampler(SamplingParams(top_k=1, seed=1)).sample(logits[0], []) == int(np.argmax(logits[0]))


def test_top_p_mask_direct():
    vals = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert top_p_mask(vals, 0.5).tolist() == [[True, False, False, False]]  # 0.5 >= 0.5 stops there
    assert top_p_mask(vals, 0.51).tolist() == [[True, True, False, False]]
    assert top_p_mask(vals, 0.96).tolist() == [[True, True, True, True]]
    assert top_p_mask(vals, 1e-6).tolist() == [[True, False, False, False]]  # never empty
    # A shortlist measured against a larger whole: 0.5 of the row is only 0.25 of the whole.
    log_z = np.log(np.array([[2.0]]))
    assert top_p_mask(vals, 0.3, log_z).tolist() == [[True, True, False, False]]


def test_min_p_mask_direct():
    vals = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    assert min_p_mask(vals, 0.0).all()
    assert min_p_mask(vals, 0.25).tolist() == [[True, True, True, False]]
    assert min_p_mask(vals, 1.0).tolist() == [[True, False, False, False]]
    unsorted = np.log(np.array([0.05, 0.5, 0.15, 0.3]))
    assert min_p_mask(unsorted, 0.5).tolist() == [False, True, False, True]


# ---- the whole chain vs the slow reference ----------------------------------------------------------


@pytest.mark.parametrize("kw", [
    {},
    dict(top_k=0),
    dict(top_k=0, min_p=0.0),
    dict(top_k=0, top_p=1.0),
    dict(top_k=0, top_p=1.0, min_p=0.0),
    dict(top_k=7, top_p=0.5, min_p=0.2, temperature=0.5),
    dict(top_k=300, top_p=0.99, min_p=0.0, temperature=1.7),
    dict(top_k=5000, top_p=0.8, min_p=0.01, temperature=1.0),
])
@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0])
def test_chain_matches_reference(kw, scale):
    rng = np.random.default_rng(int(scale * 10))
    logits = (rng.standard_normal(3000) * scale).astype(np.float32)
    params = SamplingParams(**kw)
    ids, probs = candidate_probs(logits, params)
    got = dense(ids, probs, len(logits))
    want = reference_probs(logits, params)
    assert np.array_equal(got > 0, want > 0), "kept sets differ"
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_flat_row_widens_the_top_p_shortlist():
    # Nearly uniform over 20k tokens: the nucleus is far wider than the first shortlist of 256.
    logits = np.random.default_rng(3).uniform(0, 0.01, 20000).astype(np.float32)
    params = SamplingParams(top_k=0, min_p=0.0, top_p=0.9)
    ids, probs = candidate_probs(logits, params)
    got = dense(ids, probs, len(logits))
    want = reference_probs(logits, params)
    assert 17000 < (want > 0).sum() < 19000
    assert np.array_equal(got > 0, want > 0)


def test_empirical_distribution_matches():
    logits, ids = logits_of(PROBS, vocab=2000, seed=9)
    params = SamplingParams(top_k=5, top_p=0.9, min_p=0.3, temperature=0.7, seed=10)
    # Expected by hand: top-5 renormalised -> cumulative .417 .677 .833 .938 -> top-p keeps 4;
    # min-p 0.3 keeps p >= 0.12 -> ids[:3]; temperature 0.7 -> p ** (1 / 0.7), renormalised.
    head = np.array(PROBS[:3]) ** (1 / 0.7)
    expected = head / head.sum()
    n = 20000
    draws = Sampler(params).sample_batch(np.broadcast_to(logits, (n, 2000)), [[]] * n)
    assert set(draws.tolist()) <= set(ids[:3].tolist())
    freq = np.array([(draws == i).mean() for i in ids[:3]])
    print("expected", expected.round(4), "observed", freq.round(4))
    assert np.abs(freq - expected).max() < 0.02
    chi2 = n * (((freq - expected) ** 2) / expected).sum()
    assert chi2 < 13.8  # 2 degrees of freedom, p = 0.001


def test_single_row_path_draws_the_same_distribution():
    logits, ids = logits_of([0.6, 0.3, 0.1], vocab=100, seed=11)
    s = Sampler(SamplingParams(**PLAIN, seed=12))
    draws = np.array([s.sample(logits, []) for _ in range(4000)])
    freq = np.array([(draws == i).mean() for i in ids])
    assert np.abs(freq - [0.6, 0.3, 0.1]).max() < 0.03


# ---- seeding ----------------------------------------------------------------------------------------


def _sequence(seed, n=40):
    rng = np.random.default_rng(0)
    s = Sampler(SamplingParams(seed=seed, top_k=0, min_p=0.0, temperature=1.0))
    return [s.sample(rng.standard_normal(500).astype(np.float32), []) for _ in range(n)]


def test_same_seed_same_sequence_different_seed_different():
    assert _sequence(42) == _sequence(42)
    assert _sequence(42) != _sequence(43)


def test_random_seed_is_exposed_and_replays():
    a, b = Sampler(SamplingParams()), Sampler(SamplingParams(seed=-1))
    assert 0 <= a.seed < 2**32 and 0 <= b.seed < 2**32
    assert a.seed != b.seed  # 1 in 4 billion to fail
    assert Sampler(SamplingParams(seed=7)).seed == 7
    assert _sequence(a.seed) == _sequence(a.seed)


# ---- penalties ----------------------------------------------------------------------------------------


def test_repeat_penalty_changes_the_argmax():
    logits = np.array([2.0, 1.9, 0.5, -1.0], dtype=np.float32)
    greedy = dict(temperature=0, repeat_penalty=1.1)
    assert Sampler(SamplingParams(temperature=0)).sample(logits, [0]) == 0  # 1.0 = off
    assert Sampler(SamplingParams(**greedy)).sample(logits, [0]) == 1  # 2.0 / 1.1 < 1.9
    assert Sampler(SamplingParams(**greedy)).sample(logits, [3, 3]) == 0


def test_repeat_penalty_multiplies_negative_logits():
    logits = np.array([-1.0, -1.05, -3.0], dtype=np.float32)
    out = apply_penalties(logits, [0, 0, 2], repeat_penalty=1.1, last_n=64)
    np.testing.assert_allclose(out, [-1.1, -1.05, -3.3], rtol=1e-6)  # counted once, not per repeat
    assert Sampler(SamplingParams(temperature=0, repeat_penalty=1.1)).sample(logits, [0]) == 1
    pos = apply_penalties(np.array([2.0, 0.0], dtype=np.float32), [0, 1], 2.0, 64)
    np.testing.assert_allclose(pos, [1.0, 0.0])
    assert logits.tolist() == pytest.approx([-1.0, -1.05, -3.0])  # input untouched


def test_repeat_last_n_window():
    logits = np.array([2.0, 1.0, 0.0, 0.0], dtype=np.float32)
    hist = [0, 2, 3]
    np.testing.assert_allclose(apply_penalties(logits, hist, 2.0, last_n=2), [2.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(apply_penalties(logits, hist, 2.0, last_n=3), [1.0, 1.0, 0.0, 0.0])
    np.testing.assert_allclose(apply_penalties(logits, hist, 2.0, last_n=-1), [1.0, 1.0, 0.0, 0.0])
    assert apply_penalties(logits, hist, 2.0, last_n=0) is logits  # 0 = off, no copy
    assert apply_penalties(logits, hist, 1.0, last_n=64) is logits  # defaults: no copy


def test_frequency_and_presence_penalties():
    logits = np.zeros(4, dtype=np.float32)
    out = apply_penalties(logits, [1, 1, 1, 2], 1.0, 64, frequency_penalty=0.5, presence_penalty=0.25)
    np.testing.assert_allclose(out, [0.0, -1.75, -0.75, 0.0])
    s = Sampler(SamplingParams(temperature=0, frequency_penalty=0.5))
    assert s.sample(np.array([1.0, 0.9], dtype=np.float32), [0]) == 1


def test_history_ids_outside_the_vocab_are_ignored():
    logits = np.array([1.0, 2.0], dtype=np.float32)
    np.testing.assert_allclose(apply_penalties(logits, [5, -1, 1], 2.0, 64), [1.0, 1.0])


# ---- batches -----------------------------------------------------------------------------------------


def test_sample_batch_one_row_per_request():
    rng = np.random.default_rng(13)
    logits = rng.standard_normal((4, 800)).astype(np.float32) * 5
    hist = [[], [int(np.argmax(logits[1]))], [], [1, 2, 3]]
    greedy = Sampler(SamplingParams(temperature=0, repeat_penalty=100.0))
    out = greedy.sample_batch(logits, hist)
    assert out.shape == (4,) and out.dtype == np.int64
    for i in range(4):
        assert out[i] == Sampler(SamplingParams(temperature=0, repeat_penalty=100.0)).sample(logits[i], hist[i])
    assert out[1] != np.argmax(logits[1])  # row 1's own history penalised its argmax
    # Stochastic rows each draw from their own candidates (top_k=2 of their own row).
    s = Sampler(SamplingParams(top_k=2, seed=14))
    for _ in range(20):
        out = s.sample_batch(logits, [[]] * 4)
        for i in range(4):
            assert out[i] in np.argsort(-logits[i])[:2]
    s = Sampler(SamplingParams(top_k=0, seed=15))  # the per-row path, rows of different widths
    out = s.sample_batch(logits, [[]] * 4)
    for i in range(4):
        assert reference_probs(logits[i], s.params)[out[i]] > 0


def test_sample_batch_rejects_mismatched_histories():
    with pytest.raises(ValueError):
        Sampler().sample_batch(np.zeros((2, 10), dtype=np.float32), [[]])


# ---- speed sanity (printed, not asserted: timing belongs to benchmarks) -------------------------------


def test_speed_on_a_gemma_sized_vocab():
    logits = (np.random.default_rng(16).standard_normal(262_144) * 3).astype(np.float32)
    s = Sampler(SamplingParams(seed=17))
    history = list(range(64))
    s.sample(logits, history)
    t0 = time.perf_counter()
    for _ in range(20):
        token = s.sample(logits, history)
    ms = (time.perf_counter() - t0) / 20 * 1e3
    print(f"sample() with defaults on 262,144 logits: {ms:.2f} ms")
    assert 0 <= token < 262_144


def test_token_logprobs_are_the_raw_log_softmax():
    from rocmforge_core.sampler import token_logprobs

    logits = np.array([2.0, 0.5, 3.0, -1.0], dtype=np.float32)
    expected = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
    chosen, top = token_logprobs(logits, 1, 2)
    assert chosen == pytest.approx(expected[1], abs=1e-12)
    assert [i for i, _ in top] == [2, 0]
    assert [lp for _, lp in top] == pytest.approx([expected[2], expected[0]], abs=1e-12)
    assert token_logprobs(logits, 3, 0)[1] == []
    assert [i for i, _ in token_logprobs(logits, 0, 10)[1]] == [2, 0, 1, 3]  # k past the vocabulary


def test_huge_penalties_leave_a_distribution_to_draw_from():
    """repeat_penalty 3.4e38 (the API's float bound, sent by the server fuzz) used to overflow every seen
    negative logit to -inf; with every token seen, top-p then kept nothing and the request failed
    (zero-size array). The penalised logits stay finite and every setting still draws a token."""
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal(300) * 5).astype(np.float32)
    history = list(range(300))
    for fields in (dict(repeat_penalty=3.4028235677973366e38), dict(frequency_penalty=1e308),
                   dict(presence_penalty=-1e308)):
        out = apply_penalties(logits, history, last_n=-1, **{"repeat_penalty": 1.0, **fields})
        assert np.all(np.isfinite(out)), fields
        for temperature in (1.0, 0.0):
            s = Sampler(SamplingParams(temperature=temperature, top_p=0.5, seed=0, repeat_last_n=-1, **fields))
            assert 0 <= s.sample(logits, history) < 300
