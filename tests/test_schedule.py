"""The GPU schedule: models in turn on all GPUs, or GPUs shared out by predicted token load."""

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.job.schedule import PoolLoad, ScheduleError, in_turn, plan_schedule, shared

pytestmark = pytest.mark.timeout(120)


def pool(name, tokens, tp=1, rate=1000.0, load=60.0, max_replicas=1000):
    return PoolLoad(name, tp, float(tokens), rate, load, max_replicas)


def brute_force_shared(pools, gpus):
    """Every split of the GPUs in whole replicas: the smallest predicted makespan."""
    best = None
    ranges = [range(1, min(gpus // p.tensor_parallel, p.max_replicas) + 1) for p in pools]
    for rs in itertools.product(*ranges):
        if sum(r * p.tensor_parallel for r, p in zip(rs, pools)) <= gpus:
            t = max(p.seconds(r) for r, p in zip(rs, pools))
            best = t if best is None else min(best, t)
    return best


def test_one_busy_model_and_cheap_starts_run_in_turn():
    """Nearly all tokens on one model: in turn gives it every GPU; shared would cap it at a share."""
    pools = [pool("big", 8e6), pool("small", 1e4), pool("tiny", 1e4)]
    s = plan_schedule(pools, 8)
    assert s.strategy == "in_turn"
    assert [p.replicas for p in s.placements] == [8, 8, 8]
    assert s.makespan_s == pytest.approx(sum(p.seconds(r.replicas) for p, r in zip(pools, s.placements)))
    assert s.alternatives["shared"] > s.alternatives["in_turn"]


def test_balanced_models_with_slow_starts_share_the_gpus():
    """Four models of equal load whose engines take long to start: starting them all at once wins."""
    pools = [pool(f"m{i}", 2e6, load=600) for i in range(4)]
    s = plan_schedule(pools, 8)
    assert s.strategy == "shared"
    assert [p.replicas for p in s.placements] == [2, 2, 2, 2]
    assert all(p.start_s == 0 for p in s.placements)
    assert s.makespan_s == pytest.approx(600 + 2e6 / 2000)
    assert s.alternatives["in_turn"] == pytest.approx(4 * (600 + 2e6 / 8000))


def test_gpus_are_shared_in_proportion_to_load_and_tensor_parallelism_is_respected():
    pools = [pool("a", 6e6, tp=2), pool("b", 2e6, tp=1), pool("c", 1e6, tp=4)]
    s = shared(pools, 16)
    gpus = {p.name: p.gpus for p in s.placements}
    assert sum(gpus.values()) <= 16
    assert gpus["a"] % 2 == 0 and gpus["c"] % 4 == 0
    assert gpus["a"] > gpus["b"]  # the heaviest load per GPU gets the most GPUs
    assert s.makespan_s == pytest.approx(brute_force_shared(pools, 16))


def test_shared_is_impossible_when_one_replica_of_each_does_not_fit():
    pools = [pool("a", 1e6, tp=4), pool("b", 1e6, tp=4), pool("c", 1e6, tp=4)]
    assert shared(pools, 8) is None
    s = plan_schedule(pools, 8)
    assert s.strategy == "in_turn" and s.alternatives["shared"] is None
    assert [p.replicas for p in s.placements] == [2, 2, 2]
    with pytest.raises(ScheduleError, match="one replica of every engine pool"):
        plan_schedule(pools, 8, "shared")


def test_a_model_wider_than_the_cluster_is_a_clear_error():
    with pytest.raises(ScheduleError, match="needs 8 GPUs per engine"):
        plan_schedule([pool("a", 1e6, tp=8)], 4)


def test_no_more_replicas_than_engine_calls():
    s = plan_schedule([pool("a", 1e3, max_replicas=2), pool("b", 1e7)], 8, "in_turn")
    assert [p.replicas for p in s.placements] == [2, 8]
    s = plan_schedule([pool("a", 1e3, max_replicas=2), pool("b", 1e7)], 8, "shared")
    assert [p.replicas for p in s.placements] == [1, 7]  # a finishes early on one; b takes the rest


def test_the_named_strategy_is_followed_and_the_schedule_serialises():
    pools = [pool(f"m{i}", 2e6, load=600) for i in range(4)]
    s = plan_schedule(pools, 8, "in_turn")
    assert s.strategy == "in_turn"
    assert [p.start_s for p in s.placements] == pytest.approx([0, s.placements[0].seconds, 2 * s.placements[0].seconds,
                                                               3 * s.placements[0].seconds])  # fmt: skip
    json.dumps(s.to_dict())


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 10**7), st.sampled_from([1, 2, 4]), st.floats(0, 900), st.integers(1, 20)),
             min_size=1, max_size=4),
    st.integers(1, 12),
)  # fmt: skip
def test_shared_split_is_the_best_split_and_auto_picks_the_shorter(specs, gpus):
    pools = [pool(f"m{i}", t, tp=tp, load=load, max_replicas=mr) for i, (t, tp, load, mr) in enumerate(specs)]
    if any(p.tensor_parallel > gpus for p in pools):
        with pytest.raises(ScheduleError):
            plan_schedule(pools, gpus)
        return
    s = shared(pools, gpus)
    best = brute_force_shared(pools, gpus)
    if best is None:
        assert s is None
    else:
        assert s.makespan_s == pytest.approx(best, rel=1e-9)
        assert sum(p.gpus for p in s.placements) <= gpus
        assert all(1 <= p.replicas <= pl.max_replicas for p, pl in zip(s.placements, pools))
    chosen = plan_schedule(pools, gpus)
    options = [v for v in chosen.alternatives.values() if v is not None]
    assert chosen.makespan_s == pytest.approx(min(options))
    t = in_turn(pools, gpus)
    assert all(p.gpus <= gpus for p in t.placements)


@pytest.mark.timeout(20)
def test_a_finishing_time_just_past_another_pools_start_is_quick_to_rule_out():
    """A candidate time a hair past a pool's start asks for an astronomical replica count: the search
    must rule it out at once, not count down from it."""
    pools = [pool("a", 1, load=100.0), pool("b", 1000, load=100.001 - 1e-12, max_replicas=4)]
    s = shared(pools, 8)
    assert s.makespan_s == pytest.approx(brute_force_shared(pools, 8))
