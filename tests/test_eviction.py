"""Eviction lab: each policy on its own real private server; what it evicts among cache, queue, locks."""

from __future__ import annotations

import pandas as pd
import pytest

import redisopt
from redisopt.eviction import SPLIT

POLICIES = ("noeviction", "allkeys-lru", "allkeys-random", "volatile-lru", "volatile-ttl")


@pytest.fixture(scope="module")
def lab() -> pd.DataFrame:
    return redisopt.eviction_lab(POLICIES)


def test_noeviction_evicts_nothing_and_refuses_writes_with_oom(lab: pd.DataFrame) -> None:
    row = lab.loc["noeviction"]
    assert row["퇴출된 키"] == 0
    assert row["OOM 거부"] > 0
    assert row["큐 남음"] and row["락 남음"] == 20
    assert row["새 작업 추가"] == "OOM"  # the producer is refused too: loud, not silent


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
def test_allkeys_policies_evict_the_queue_and_the_locks(lab: pd.DataFrame, policy: str) -> None:
    row = lab.loc[policy]
    assert row["퇴출된 키"] > 0 and row["OOM 거부"] == 0
    assert not row["큐 남음"] and row["큐 길이"] == 0  # the whole backlog is gone
    assert row["락 남음"] < 20
    assert row["새 작업 추가"] == "OK"  # ...and a producer notices nothing: the push starts a new list


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-ttl"])
def test_volatile_policies_spare_the_queue_but_evict_locks(lab: pd.DataFrame, policy: str) -> None:
    row = lab.loc[policy]
    assert row["퇴출된 키"] > 0
    assert row["큐 남음"] and row["큐 길이"] == 500
    assert row["락 남음"] < 20


def test_the_fix_keeps_queue_and_locks_on_a_noeviction_server(lab: pd.DataFrame) -> None:
    row = lab.loc[SPLIT]
    assert row["퇴출된 키"] > 0 and row["OOM 거부"] == 0  # the cache still evicts
    assert row["큐 남음"] and row["락 남음"] == 20 and row["새 작업 추가"] == "OK"


def test_the_lab_evicts_many_times_what_fits(lab: pd.DataFrame) -> None:
    # the checked verdicts rest on every key being sampled: evictions must outnumber cache keys
    row = lab.loc["allkeys-lru"]
    assert row["퇴출된 키"] > 2 * row["캐시 키"]
    assert (lab["적중률"].between(0.2, 0.95)).all()


def test_ranks_are_seeded_and_skewed() -> None:
    w = redisopt.EvictionWorkload(requests=5_000)
    ranks = w.ranks()
    assert ranks == w.ranks()
    assert ranks.count(0) > 20 * max(1, ranks.count(100))  # Zipf, s=1: rank 0 ~100x rank 100
    assert redisopt.EvictionWorkload(requests=5_000, seed=8).ranks() != ranks


def test_bad_policy_and_bad_workload_are_refused_before_any_server_starts() -> None:
    with pytest.raises(ValueError, match="allkeys-lru"):
        redisopt.eviction_lab(["allkeys-lrv"])
    with pytest.raises(ValueError, match="budget"):
        redisopt.EvictionWorkload(budget=0)
    with pytest.raises(ValueError, match="idle"):
        redisopt.EvictionWorkload(idle=-1)


def test_a_single_run_without_the_idle_wait_still_reports() -> None:
    row = redisopt.eviction_run("volatile-ttl", redisopt.EvictionWorkload(idle=0, requests=3_000))
    assert row["정책"] == "volatile-ttl" and row["큐 남음"]
