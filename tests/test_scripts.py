"""Scripts kept on a class must not keep the first client's server alive (redisopt.scripts)."""

from __future__ import annotations

import gc

import redisopt
from redisopt.queue import ArticleQueueUpdate, RequestTable


def test_classes_with_scripts_let_a_dropped_server_stop() -> None:
    server = redisopt.start_server()
    client = server.client()
    lock = redisopt.Lock(client, "scripts:lock")
    lock.acquire()
    lock.release()
    redisopt.FencedResource(client, "scripts:res").write("v", 1)
    redisopt.SharedCounter(client, "scripts:n").add_scripted(1)
    RequestTable(client, "scripts").add(1, {"state": "new"})
    ArticleQueueUpdate(client, "scripts:q").update(0, {"state": "x"})
    finalizer = server._finalizer
    del server, client, lock
    gc.collect()
    assert not finalizer.alive, "a class-level Script kept the first client, its pool and its server"


def test_an_unbound_script_runs_on_whichever_client_is_passed(r, ks) -> None:  # noqa: ANN001
    from redisopt.scripts import unbound_script

    script = unbound_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert script.sha == r.script_load("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    other = redisopt.start_server().client()
    assert script(keys=[ks.key("n")], args=[2], client=r) == 2
    assert script(keys=["n"], args=[5], client=other) == 5  # NOSCRIPT there: loaded, then run
    pipe = r.pipeline()
    script(keys=[ks.key("n")], args=[1], client=pipe)
    assert pipe.execute() == [3]
