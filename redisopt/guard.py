"""The guard: on a server the user supplied (REDIS_URL), refuse what would destroy, reconfigure or
administer it, unless the user opts in.

The refusals come from the server itself: its command table (``COMMAND``) marks every command and
subcommand that destroys, reconfigures or administers with the ACL categories ``@dangerous`` /
``@admin`` (and the ``admin`` flag), so the list follows each server release instead of going stale.
Two short, explained lists adjust it (``ALLOWED``: read-only introspection the chapters need;
``ALSO_REFUSED``: script and function wipes the server does not flag). What is checked is what goes
on the wire: the argument vector read back from redis-py's own packer, so every spelling (case,
bytes, ``"CONFIG SET"`` as one string, an empty first argument that redis-py drops) is seen as the
server will see it. Scripts are read before they reach the server (see ``script_calls``).

It is a seatbelt against accidents, not a security boundary: ACL users are the real one.
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from redisopt.errors import DestructiveCommandError

OPT_IN_HINT = "set REDISOPT_ALLOW_DESTRUCTIVE=1 or call redisopt.connect(allow_destructive=True)"

# The server's own classification: a command in either category destroys, reconfigures or
# administers the server (or, like KEYS and SORT, can block all of it).
REFUSED_CATEGORIES = frozenset({"@dangerous", "@admin"})

# Flagged by the server, yet read-only and needed by the chapters on a user's server too. Each
# entry says who needs it. Left out on purpose, so still refused: KEYS and SORT (they block the
# whole server; chapter 4's KEYS demo runs on a private server, helpers use SCAN), CLIENT LIST and
# ACL LIST/GETUSER (other clients' addresses, other users' password hashes), MONITOR (load).
ALLOWED: Mapping[str, str] = {
    "info": "statistics only; identify() and chapter 7's INFO deltas and hit rate",
    "config|get": "reads settings; memory.thresholds reads the encoding limits",
    "slowlog|get": "chapter 7 reads the slow log",
    "slowlog|len": "chapter 7 reads the slow log",
    "commandlog|get": "chapter 7, Valkey 8.1+'s slow log",
    "commandlog|len": "chapter 7, Valkey 8.1+'s slow log",
    "latency|latest": "chapter 7 reads latency events",
    "latency|history": "chapter 7 reads latency events",
    "latency|histogram": "chapter 7 reads per-command latency",
}

# Not flagged by the server (only @scripting / @write), yet they destroy state outside any key
# prefix: every cached script or function library, including other applications'.
ALSO_REFUSED: Mapping[str, str] = {
    "script|flush": "it drops every cached script, other applications' included",
    "script|kill": "it kills a script another client is running",
    "function|flush": "it deletes every function library",
    "function|delete": "it deletes a function library",
    "function|restore": "it replaces or adds function libraries from a dump",
    "function|kill": "it kills a function another client is running",
}

# Used only when the server will not show its command table (an ACL user without COMMAND):
# whole families, minus ALLOWED.
FALLBACK_REFUSED = (
    "flushall flushdb debug shutdown swapdb replicaof slaveof save bgsave bgrewriteaof migrate "
    "restore restore-asking monitor failover sync psync module acl config cluster latency slowlog "
    "commandlog keys sort sort_ro pfdebug pfselftest replconf role lastsave "
    "client|kill client|pause client|unpause client|unblock client|no-evict client|list"
).split()
FALLBACK_CONTAINERS = frozenset({"acl", "config", "cluster", "latency", "slowlog", "commandlog",
                                 "module", "client", "script", "function"})

# Where the script body is: argument index, or -1 for the last one (FUNCTION LOAD [REPLACE] code).
SCRIPT_ARG = {"eval": 1, "eval_ro": 1, "script|load": 2, "function|load": -1}


@dataclass(frozen=True)
class Rules:
    """What one server refuses: ``refused`` maps ``name`` or ``name|subcommand`` to the reason."""

    refused: Mapping[str, str]
    containers: frozenset[str]  # commands whose second argument names a subcommand
    source: str


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    return str(value)


def rules_from_command_table(reply: Iterable[Any]) -> Rules:
    """Rules from a raw ``COMMAND`` reply (RESP2 or RESP3, bytes or str)."""
    refused: dict[str, str] = {}
    containers: set[str] = set()

    def visit(doc: Sequence[Any]) -> None:
        name = _text(doc[0]).lower()
        flags = {_text(f).lower() for f in doc[2]}
        categories = {_text(c).lower() for c in doc[6]} if len(doc) > 6 else set()
        flagged = sorted(categories & REFUSED_CATEGORIES) or (["admin flag"] if "admin" in flags else [])
        if flagged and name not in ALLOWED:
            refused[name] = f"the server lists it as {'/'.join(flagged)}"

    for doc in reply:
        subcommands = doc[9] if len(doc) > 9 else []
        if subcommands:
            containers.add(_text(doc[0]).lower())
            for sub in subcommands:
                visit(sub)
        visit(doc)
    for name, reason in ALSO_REFUSED.items():
        refused.setdefault(name, reason)
    return Rules(refused, frozenset(containers), "the server's COMMAND table")


@functools.cache
def fallback_rules() -> Rules:
    refused = {name: "it administers the server (built-in list)" for name in FALLBACK_REFUSED}
    refused.update(ALSO_REFUSED)
    return Rules(refused, FALLBACK_CONTAINERS, "built-in list: the server did not show its COMMAND table")


def wire_args(packed: Sequence[Any]) -> list[bytes]:
    """The argument vector in redis-py's packed RESP output: exactly what the server receives."""
    if len(packed) == 1:
        data = packed[0] if type(packed[0]) is bytes else bytes(packed[0])
    else:
        data = b"".join(bytes(chunk) for chunk in packed)
    end = data.index(b"\r\n")
    count = int(data[1:end])
    args, pos = [], end + 2
    for _ in range(count):
        end = data.index(b"\r\n", pos)
        size = int(data[pos + 1 : end])
        args.append(data[end + 2 : end + 2 + size])
        pos = end + 4 + size
    return args


# --------------------------------------------------------------------------- scripts

_LUA_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<comment>--(?:\[(?P<ceq>=*)\[.*?\](?P=ceq)\]|[^\n]*))
      | (?P<long>\[(?P<leq>=*)\[.*?\](?P=leq)\])
      | (?P<string>'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<number>\d[\w.]*)
      | (?P<other>\.\.|.)""",
    re.S | re.X,
)


def _lua_tokens(body: str) -> list[tuple[str, str]]:
    tokens = []
    for match in _LUA_TOKEN.finditer(body):
        kind = match.lastgroup or "other"  # the outer group: it closes last
        if kind not in {"space", "comment"}:
            tokens.append((kind, match.group()))
    return tokens


def _literal(token: tuple[str, str]) -> str | None:
    """A string literal's text, or None when it is not one plain literal (escapes included)."""
    kind, text = token
    if kind == "string" and "\\" not in text:
        return text[1:-1]
    if kind == "long":
        inner = text[text.index("[", 1) + 1 : text.rindex("]", 0, -1)]
        return inner[1:] if inner.startswith("\n") else inner
    return None


# Globals that run or reach code the text does not show: a script using them is treated like a
# call with a non-literal command name.
_DYNAMIC = frozenset({"loadstring", "load", "_G", "rawget", "getfenv", "setfenv"})


def script_calls(body: str) -> list[tuple[str | None, str | None]]:
    """The commands a Lua script (EVAL, SCRIPT LOAD, FUNCTION LOAD) calls: ``(name, next literal)``.

    A name is None when the script does not spell it as one string literal, reaches
    ``redis``/``server`` other than by ``.call``/``.pcall`` with arguments (an alias, an index),
    or uses a global that runs code built at run time (``loadstring``, ``_G``, …).
    """
    tokens = _lua_tokens(body) + [("end", "")] * 8  # lookahead past the end of a cut-off script
    calls: list[tuple[str | None, str | None]] = []
    for i, (kind, text) in enumerate(tokens):
        if kind != "name" or i and tokens[i - 1][1] in {".", ":"}:
            continue  # not a name, or a field (t.redis, t.load) rather than the global
        if text in _DYNAMIC:
            calls.append((None, None))
            continue
        if text not in {"redis", "server"}:
            continue
        if tokens[i + 1][1] != ".":
            calls.append((None, None))  # `local r = redis`, redis['call'], redis:call
            continue
        if tokens[i + 2][1] not in {"call", "pcall"}:
            continue  # redis.log, redis.status_reply, server.register_function, …
        after = tokens[i + 3]
        if _literal(after) is not None:  # redis.call'FLUSHDB'
            calls.append((_literal(after), None))
        elif after[1] == "(":
            first, sep = tokens[i + 4], tokens[i + 5]
            name = _literal(first) if sep[1] in {",", ")", ""} else None  # "": the script ends
            sub = None
            if sep[1] == "," and tokens[i + 7][1] in {",", ")"}:
                sub = _literal(tokens[i + 6])
            calls.append((name, sub))
        else:
            calls.append((None, None))  # `local c = redis.call`
    return calls


# --------------------------------------------------------------------------- the guard


class Guard:
    """The guard for one user-supplied server: its rules, fetched once and shared by its clients."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.rules: Rules | None = None
        self.fetch_ms = 0.0
        self._lock = threading.RLock()  # load() holds it while accept() takes it again
        # First arguments (str/bytes, as passed) that alone make a command safe, whatever follows:
        # one plain word, not refused, not a container, not a script. Skips repacking GET, SET, …
        self._safe_first: set[str | bytes] = set()
        self._safe_scripts: set[bytes] = set()  # script bodies already read and found harmless
        # Wire command names (bytes, exactly as sent) found safe alone, for hand-packed commands.
        # Apart from _safe_first: b"CONFIG SET" passed to redis-py is split in two, on our wire it is one name.
        self._safe_wire: set[bytes] = set()

    @property
    def refused(self) -> Mapping[str, str]:
        return self.rules.refused if self.rules else {}

    @property
    def source(self) -> str:
        return self.rules.source if self.rules else "not fetched yet"

    def load(self, connection: redis.connection.AbstractConnection) -> None:
        """Fetch the rules on ``connection`` (one COMMAND round trip), unless already done."""
        with self._lock:  # threads opening connections at once fetch the table once
            if self.rules is not None:
                return
            started = time.perf_counter()
            try:
                connection.send_command("COMMAND")
                self.accept(connection.read_response(), started)
            except redis.exceptions.ResponseError as exc:  # NOPERM: an ACL user without COMMAND
                self.accept(exc, started)

    def accept(self, reply: Iterable[Any] | redis.exceptions.ResponseError, started: float) -> None:
        """Take the rules from a COMMAND reply (fetched by a sync or an asyncio connection).

        A ResponseError (an ACL user not allowed COMMAND) gets the built-in fallback list.
        """
        with self._lock:
            if self.rules is not None:
                return
            if isinstance(reply, redis.exceptions.ResponseError):
                self.rules = fallback_rules()
            else:
                self.rules = rules_from_command_table(reply)
            self.fetch_ms = (time.perf_counter() - started) * 1000

    def check_call(self, args: Sequence[Any], pack: Callable[..., Sequence[Any]]) -> None:
        """Check a command as redis-py's ``pack`` will send it (its argument vector, read back)."""
        first = args[0] if args else None
        cacheable = type(first) in (str, bytes) and self.rules is not None
        if cacheable and first in self._safe_first:
            return
        self.check(wire_args(pack(*args)))
        if cacheable and len(self._safe_first) < 4096:
            head = wire_args(pack(first))  # what the first argument alone becomes on the wire
            if len(head) == 1 and self._safe_alone(head[0]):
                self._safe_first.add(first)  # type: ignore[arg-type]

    def check_packed(self, name: bytes, data: bytes) -> None:
        """Check one command packed to RESP by hand (``connection.pack_command``), before it is sent.

        ``name`` is the first argument its packer wrote. A name already found safe alone decides at
        once; any other command is read back in full from ``data``, as the server will read it.
        """
        if name in self._safe_wire:
            return
        argv = wire_args([data])
        self.check(argv)
        if self.rules is not None and argv and self._safe_alone(argv[0]) and len(self._safe_wire) < 4096:
            self._safe_wire.add(bytes(argv[0]))

    def _safe_alone(self, word: bytes) -> bool:
        rules = self.rules
        name = word.lower().decode("latin-1")
        return (rules is not None and name not in rules.refused and name not in rules.containers
                and name not in SCRIPT_ARG)

    def check(self, argv: Sequence[bytes]) -> None:
        """Raise DestructiveCommandError if the server would run something refused."""
        rules = self.rules or fallback_rules()
        if not argv:
            return
        name = argv[0].lower().decode("latin-1")
        key = name
        if name in rules.containers and len(argv) > 1:
            key = f"{name}|{argv[1].lower().decode('latin-1')}"
        reason = self._reason(rules, key, name)
        if reason is None and key == "function|load" and any(a.upper() == b"REPLACE" for a in argv[2:-1]):
            reason = "REPLACE overwrites a function library of the same name"
        at = SCRIPT_ARG.get(key)
        if reason is None and at is not None and len(argv) > max(at, 2) and argv[at] not in self._safe_scripts:
            reason = self._script_reason(rules, argv[at].decode("utf-8", "replace"))
            if reason is None and self.rules is not None and len(self._safe_scripts) < 1024:
                self._safe_scripts.add(bytes(argv[at]))
        if reason is not None:
            self._refuse(key.replace("|", " ").upper(), reason)

    @staticmethod
    def _reason(rules: Rules, key: str, name: str) -> str | None:
        if key in ALLOWED or name in ALLOWED:
            return None
        return rules.refused.get(key) or rules.refused.get(name)

    def _script_reason(self, rules: Rules, body: str) -> str | None:
        for name, sub in script_calls(body):
            if name is None:
                return "the script calls a command whose name is not a plain string literal"
            name = name.lower()
            key = f"{name}|{(sub or '').lower()}" if name in rules.containers else name
            if name in rules.containers and sub is None and any(
                k.startswith(f"{name}|") for k in rules.refused
            ):
                return f"the script calls {name.upper()} with a subcommand that is not a literal"
            reason = self._reason(rules, key, name)
            if reason is not None:
                return f"the script calls {key.replace('|', ' ').upper()} ({reason})"
        return None

    def _refuse(self, command: str, reason: str) -> None:
        raise DestructiveCommandError(
            f"{command} refused: {self.label} is a server you supplied, and {reason}; redisopt "
            f"never flushes, reconfigures or administers it. To allow it anyway, {OPT_IN_HINT}."
        )
