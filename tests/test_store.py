"""SQLiteStore: real SQLite, exact query counts across threads and processes, a delay outside the lock."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading

import pytest

from redisopt import SQLiteStore
from tests.helpers import run_python


def test_values_round_trip_and_a_missing_key_is_the_default() -> None:
    with SQLiteStore() as store:
        values = {"none": None, "true": True, "false": False, "zero": 0, "text": "한국어", "list": [1, {"a": None}]}
        for key, value in values.items():
            store.put(key, value)
        assert {k: store.get(k, "MISS") for k in values} == values
        assert store.get("absent") is None
        assert store.get("absent", "MISS") == "MISS"
        assert store.items() == values
        assert store.delete("none") and not store.delete("none")


def test_queries_counts_each_statement_exactly_across_threads() -> None:
    with SQLiteStore() as store:
        def work(t: int) -> None:
            for i in range(25):
                store.put(f"{t}:{i}", i)
                assert store.get(f"{t}:{i}") == i

        threads = [threading.Thread(target=work, args=(t,)) for t in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.queries == 32 * 25 * 2
        assert len(store.items()) == 32 * 25
        assert store.queries == 32 * 25 * 2 + 1  # items() is a data statement too
        store.put_many([(f"batch:{i}", i) for i in range(100)])
        assert store.queries == 32 * 25 * 2 + 2  # a batch is one statement, one transaction
        store.reset_queries()
        assert store.queries == 0


class _HeldStore(SQLiteStore):
    """Holds the ``holder`` thread inside its delay until ``release`` is set."""

    holder: threading.Thread | None = None
    inside = threading.Event()
    release = threading.Event()

    def _pause(self, seconds: float) -> None:
        if threading.current_thread() is self.holder:
            self.inside.set()
            self.release.wait(30)


def test_the_delay_sleeps_outside_the_lock() -> None:
    """While one thread is inside its query's delay, another thread's query runs to completion."""
    with _HeldStore(delay=1.0) as store:
        store.holder = threading.Thread(target=store.get, args=("k",), daemon=True)
        store.holder.start()
        assert store.inside.wait(30)
        other = threading.Thread(target=store.put, args=("k", 1))
        other.start()
        other.join(10)  # would hang until release if the delay held the statement lock
        finished_first = not other.is_alive()
        store.release.set()
        store.holder.join(30)
        other.join(30)
        assert finished_first
        assert store.queries == 2 and store.get("k") == 1


def test_a_versioned_row_never_overwrites_a_newer_one() -> None:
    """A flusher restarted after a crash writes its last batch again; older entries must not win."""
    with SQLiteStore() as store:
        store.put_many([("k", "new", "00000000000000000002-00000000000000000000")])
        store.put_many([("k", "old", "00000000000000000001-00000000000000000005")])
        assert store.get("k") == "new"
        store.put_many([("k", "a", "3"), ("k", "b", "5"), ("k", "c", "4")])  # in one batch too
        assert store.get("k") == "b"
        store.put("k", "direct")  # a direct put has no version and always lands
        assert store.get("k") == "direct"


def test_a_temp_store_is_shared_with_another_process_and_removed_at_close() -> None:
    store = SQLiteStore()
    store.put("from-parent", [1, 2])
    code = (f"from redisopt import SQLiteStore\ns = SQLiteStore({store.path!r})\n"
            "print(s.get('from-parent'))\nfor i in range(10): s.put(f'child:{i}', i)\n"
            "print(s.owns_file); s.close()")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["[1,", "2]", "False"]
    assert store.get("child:9") == 9
    assert store.queries == 1 + 1 + 10 + 1  # the child's statements are counted here too
    assert os.path.exists(store.path)  # the child did not own it: it left the file alone
    store.close()
    assert not os.path.exists(store.path) and not os.path.exists(os.path.dirname(store.path))
    with pytest.raises(ValueError, match="closed"):
        store.get("x")


def test_a_temp_store_is_removed_when_its_process_exits() -> None:
    done = run_python("from redisopt import SQLiteStore\ns = SQLiteStore()\ns.put('k', 1)\nprint(s.path)")
    assert done.returncode == 0, done.stderr
    path = done.stdout.strip()
    assert path.endswith("store.sqlite3") and not os.path.exists(os.path.dirname(path))


def test_a_given_path_is_kept(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "db.sqlite3")
    with SQLiteStore(path) as store:
        store.put("k", True)
    assert os.path.exists(path)
    with SQLiteStore(path) as again:
        assert again.get("k") is True


def _child_puts(store: SQLiteStore, n: int) -> None:
    for i in range(n):
        store.put(f"spawned:{i}", i)
    store.close()


def test_a_pickled_store_reopens_the_same_file_in_a_spawned_process() -> None:
    with SQLiteStore() as store:
        assert pickle.loads(pickle.dumps(store)).path == store.path
        child = multiprocessing.get_context("spawn").Process(target=_child_puts, args=(store, 5))
        child.start()
        child.join(60)
        assert child.exitcode == 0
        assert store.get("spawned:4") == 4
        assert store.queries == 6
        assert os.path.exists(store.path)  # the child closed its copy without removing the file


@pytest.mark.parametrize("delay", [-1, float("nan"), True, "1"])
def test_a_bad_delay_is_refused(delay: object) -> None:
    with pytest.raises(ValueError, match="delay"):
        SQLiteStore(delay=delay)  # type: ignore[arg-type]
