"""Worker processes that run hang-prone or crash-prone code, one task at a time each, under per-task deadlines, and
that never outlive their owner.

Reward code and math-verify may hang (sympy on `2^{3^{4^{5^{6}}}}` spins in C code that no signal handler
interrupts), kill their interpreter (`os._exit`, a segfault in an extension) or raise anything, BaseException
included; none of it may reach the training driver, and none of it may survive it. So:

- A pool starts one *zygote*: a fresh interpreter (`python -c`, never a fork of the caller, which may be a Ray
  actor with threads) that imports the handler's module and runs `initializer(*initargs)` once. Every worker is a
  `fork()` of the zygote, so it starts with that state in milliseconds: a worker killed at a deadline is replaced
  at once, which is what lets each answer have its own deadline without replacements eating the batch's time.
- Each worker is the leader of its own process group; a task past its deadline gets the whole group killed
  (SIGKILL), so whatever the task started goes with it. The caller sees a "timeout" outcome for that task.
- Nothing outlives the owner, however the owner ends. Workers set a parent-death signal (Linux
  `prctl(PR_SET_PDEATHSIG, SIGKILL)`): the kernel kills them when the zygote ends, even in the middle of a C call.
  The zygote, single-threaded and idle between requests, notices at once when its pipe to the owner closes, which
  the kernel does when the owner dies (SIGKILL included): it kills each worker's process group, then exits.
  `close()`, garbage collection and interpreter exit kill the workers' groups directly.
- Ctrl-C and SIGTERM sent to the owner's process group do not reach the workers (own groups) or the zygote
  (ignores them): the owner decides what stops.
- Whatever runs in a worker or the zygote may write anything to its pipe, so nothing it sends is unpickled here:
  replies are data, a length-prefixed JSON message of at most MAX_REPLY_BYTES (a result that is not JSON data, or
  is larger, is an "error" outcome), read a chunk at a time as the pipe has bytes, under the task's deadline. A
  partial message is a timeout at the deadline, an oversized or malformed one an "error" at once; either way the
  worker is killed and replaced. Each task carries a sequence number its reply repeats, so a reply written out of
  turn is never taken for another task's.
- A task may also share a batch deadline (`run(..., batch_deadline_s=)`) and a short first try
  (`first_try_s=`): a task past its first try goes to the back of the queue and gets its full deadline only after
  every other task has had its turn, so a few hung tasks cannot starve the healthy ones.

Why not pebble's `ProcessPool` or `concurrent.futures`: both start workers through `multiprocessing`, whose
"spawn"/"forkserver" re-run the caller's `__main__` in every worker (a console script would import torch into
each; a script without the `if __name__ == "__main__"` guard recurses), "fork" copies a threaded caller (Ray
actors: deadlocks), and neither gives workers a parent-death signal or kills a timed-out task's process group, so a
task stuck in C code outlives a killed owner, which is the failure this module exists to prevent.
"""

import ctypes
import itertools
import json
import multiprocessing
import multiprocessing.connection
import multiprocessing.reduction
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rlqa.errors import UserError

# Spawning a Python interpreter and importing sympy takes seconds on a busy 2-core machine; this bounds a broken start.
START_TIMEOUT_S = 120.0
# How long the zygote waits for a request before it reaps its finished children.
REAP_INTERVAL_S = 0.2
EXIT_STATUS_WAIT_S = 5.0
# The largest reply a worker may send (JSON); a batch's rewards are a few kB. A larger announced size is refused
# before it is read.
MAX_REPLY_BYTES = 16 * 1024**2
# The zygote's replies (ready or its start-up traceback, a pid, an exit status): small, and due at once.
MAX_CONTROL_BYTES = 1024**2
CONTROL_TIMEOUT_S = 30.0
_HEADER_BYTES = 8  # a message is its JSON's length (big-endian) and the JSON
_PENDING = object()  # the message is not complete yet
_PR_SET_PDEATHSIG = 1
_in_worker = False  # set in a worker process: code there may run hang-prone work in-process
# The zygote's whole program: take the caller's import path over the pipe, then serve.
_BOOTSTRAP = """\
import sys
from multiprocessing.connection import Connection
conn = Connection(int(sys.argv[1]))
sys.path[:] = conn.recv()
from rewards.workers import _zygote_main
_zygote_main(conn)
"""


@dataclass(frozen=True)
class Outcome:
    """What became of one task: "ok" (value holds the handler's result), "error" (detail holds the traceback),
    "timeout" (its worker was killed at the deadline, or the batch ran out of time first) or "crashed" (the worker
    died, detail says how)."""

    status: Literal["ok", "error", "timeout", "crashed"]
    value: Any = None
    detail: str = ""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, chained under it when it is re-raised in the caller."""


class _Zygote:
    """The interpreter that holds the initialised state and forks workers on request."""

    def __init__(self, name: str, setup: tuple):
        self.name = name
        self.lock = threading.Lock()
        self.conn, child_conn = multiprocessing.Pipe(duplex=True)
        child_fd = child_conn.fileno()
        self.process = subprocess.Popen([sys.executable, "-c", _BOOTSTRAP, str(child_fd)], pass_fds=(child_fd,))
        child_conn.close()
        self.reader = _MessageReader(self.conn.fileno(), MAX_CONTROL_BYTES)
        self.conn.send(sys.path)
        self.conn.send(setup)

    def await_ready(self) -> None:
        try:
            reply = self._reply(START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"{self.name}: the worker zygote did not start within {START_TIMEOUT_S:.0f} s") from None
        except EOFError:
            code = self.process.wait()
            raise RuntimeError(f"{self.name}: the worker zygote died while starting (exit code {code})") from None
        except OSError as err:  # it wrote something that is not a message
            raise RuntimeError(f"{self.name}: the worker zygote broke the protocol while starting: {err}") from None
        if reply == ["ready"]:
            return
        if not (
            isinstance(reply, list) and len(reply) == 4 and reply[0] == "init_error"
            and isinstance(reply[1], str) and isinstance(reply[2], bool) and isinstance(reply[3], str)
        ):
            raise RuntimeError(f"{self.name}: the worker zygote sent a malformed start-up message")
        _, message, is_user_error, remote_traceback = reply
        if is_user_error:
            raise UserError(message) from RemoteTraceback(remote_traceback)
        raise RuntimeError(f"{self.name}: a worker failed to start: {message}") from RemoteTraceback(remote_traceback)

    def fork(self) -> tuple[int, multiprocessing.connection.Connection]:
        """A new worker's pid and the caller's end of its pipe."""
        conn, child_conn = multiprocessing.Pipe(duplex=True)
        try:
            with self.lock:
                self.conn.send(("fork", None))
                multiprocessing.reduction.send_handle(self.conn, child_conn.fileno(), self.process.pid)
                pid = self._reply(CONTROL_TIMEOUT_S)
        except (EOFError, OSError, TimeoutError) as err:
            raise RuntimeError(f"{self.name}: the worker zygote did not fork a worker ({type(err).__name__})") from None
        finally:
            child_conn.close()
        if type(pid) is not int or pid <= 0:
            raise RuntimeError(f"{self.name}: the worker zygote sent {pid!r} for a process id")
        return pid, conn

    def exit_status(self, pid: int) -> int | None:
        """The worker's exit code (negative: the signal that killed it), or None if it has not exited yet."""
        if not self.is_alive():
            return None
        try:
            with self.lock:
                self.conn.send(("status", pid))
                code = self._reply(CONTROL_TIMEOUT_S)
        except (EOFError, OSError, TimeoutError):
            return None
        return code if type(code) is int else None

    def _reply(self, timeout: float):
        """The zygote's next message, read as data (never unpickled), within `timeout` seconds."""
        return _read_message(self.conn, self.reader, time.monotonic() + timeout)

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Close its pipe (it exits, and its workers with it); kill it if it does not."""
        self.conn.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class _Worker:
    def __init__(self, name: str, pid: int, conn, zygote: _Zygote):
        self.name = name
        self.pid = pid
        self.conn = conn
        self.zygote = zygote
        self.reader = _MessageReader(conn.fileno(), MAX_REPLY_BYTES)

    def is_alive_idle(self) -> bool:
        """An idle worker sends nothing: a readable pipe means it closed, i.e. the worker died."""
        try:
            return not self.conn.poll(0)
        except OSError:
            return False

    def exit_description(self) -> str:
        if not self.zygote.is_alive():  # its parent-death signal killed it: no exit status to wait for
            return "died with its zygote, which was killed"
        deadline = time.monotonic() + EXIT_STATUS_WAIT_S
        while (code := self.zygote.exit_status(self.pid)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if code is None:
            return "closed its pipe but did not exit"
        return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"

    def kill(self) -> None:
        _kill_group(self.pid)
        self.conn.close()


@dataclass(frozen=True)
class _Job:
    index: int
    seq: int  # the task's sequence number, which its reply repeats
    expires: float  # time.monotonic() at which the worker is killed
    first_try: bool  # a first try cut short by `first_try_s` goes back in the queue instead of timing out


class WorkerPool:
    """`processes` workers running `handler(state, task)`, with `state = initializer(*initargs)` computed once in
    the zygote and inherited by every worker.

    `handler` and `initializer` must be module-level functions (they are pickled by reference).
    """

    def __init__(
        self,
        handler: Callable[[Any, Any], Any],
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        processes: int = 1,
        name: str = "rlqa-worker",
    ):
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self._setup = (handler, initializer, initargs)
        self._processes = processes
        self._name = name
        self._names = itertools.count()
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        # Every live worker, idle or held, and the zygote; shared with the finalizer, which must not hold self.
        self._workers: list[_Worker] = []
        self._zygotes: list[_Zygote] = []
        self._started = False
        self._closed = False
        weakref.finalize(self, _stop_all, self._workers, self._zygotes)

    def start(self) -> None:
        """Start the zygote (it runs the initializer; its exception is re-raised here) and the workers."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: the pool is closed")
            if self._started:
                return
            try:
                self._zygotes.append(_Zygote(self._name, self._setup))
                self._zygotes[0].await_ready()
                for _ in range(self._processes):
                    self._idle.put(self._spawn_locked())
            except BaseException:
                _stop_all(self._workers, self._zygotes)
                raise
            self._started = True

    def run(
        self,
        tasks: Sequence[Any],
        deadlines_s: float | Sequence[float],
        *,
        first_try_s: float | None = None,
        batch_deadline_s: float | None = None,
    ) -> list[Outcome]:
        """One outcome per task, in order. A task's deadline counts from when its worker received it.

        first_try_s: a task still running after this long is killed and queued again behind every other task, then
            given its whole deadline. batch_deadline_s: no task runs past this long after the call began; tasks not
            finished by then are "timeout" outcomes.
        """
        if isinstance(deadlines_s, (int, float)):
            deadlines_s = [float(deadlines_s)] * len(tasks)
        if len(deadlines_s) != len(tasks):
            raise ValueError(f"{len(tasks)} tasks but {len(deadlines_s)} deadlines")
        self.start()
        batch_end = time.monotonic() + batch_deadline_s if batch_deadline_s is not None else float("inf")
        outcomes: list[Outcome | None] = [None] * len(tasks)
        todo: deque[tuple[int, bool]] = deque((index, first_try_s is not None) for index in range(len(tasks)))
        held: dict[_Worker, _Job] = {}
        rerun: set[int] = set()  # tasks run again after a reply out of turn (at most once each)

        def assign(worker: _Worker, index: int, first_try: bool) -> None:
            limit = min(first_try_s, deadlines_s[index]) if first_try else deadlines_s[index]
            first_try = first_try and limit < deadlines_s[index]
            seq = next(self._seq)
            try:
                worker.conn.send((seq, tasks[index]))
            except OSError:  # the worker died: its end-of-file settles the job on the next wait
                pass
            held[worker] = _Job(index, seq, min(time.monotonic() + limit, batch_end), first_try)

        def release(worker: _Worker) -> None:
            if todo and time.monotonic() < batch_end:
                assign(worker, *todo.popleft())
            else:
                self._idle.put(worker)

        while todo or held:
            if time.monotonic() >= batch_end:
                for index, _ in todo:
                    outcomes[index] = Outcome("timeout", detail="the batch's deadline passed before it finished")
                todo.clear()
            while todo:
                worker = self._take(block=not held)
                if worker is None:
                    break
                assign(worker, *todo.popleft())
            if not held:
                continue
            timeout = max(0.0, min(job.expires for job in held.values()) - time.monotonic())
            ready = multiprocessing.connection.wait([worker.conn for worker in held], timeout=timeout)
            now = time.monotonic()
            for worker, job in list(held.items()):
                if worker.conn in ready and (settled := self._receive(worker, job.seq)) is not None:
                    del held[worker]
                    outcome, worker = settled
                    if outcome is None and job.index not in rerun:  # a reply out of turn: once more, on a fresh worker
                        rerun.add(job.index)
                        todo.appendleft((job.index, job.first_try))
                    else:
                        outcomes[job.index] = outcome or Outcome("error", detail="its worker twice sent a reply out of turn")
                elif now >= job.expires:  # a partial reply counts as none
                    del held[worker]
                    worker = self._replace(worker)
                    if job.first_try and now < batch_end:
                        todo.append((job.index, False))
                    else:
                        outcomes[job.index] = _expired(worker.name, now >= batch_end)
                else:
                    continue
                release(worker)
        return outcomes

    def close(self) -> None:
        """Kill every worker and stop the zygote; call it once no `run` is in flight."""
        with self._lock:
            self._closed = True
            _stop_all(self._workers, self._zygotes)

    def session(self) -> "Session":
        """A worker of its own, outside the shared ones, for a sequence of tasks that share its memory (one
        environment's episode: the instance a task creates lives on for the next). `run_sessions` runs their tasks."""
        self.start()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name}: the pool is closed")
            return Session(self._spawn_locked())

    def run_sessions(self, tasks: Sequence[tuple["Session", Any]], deadline_s: float) -> list[Outcome]:
        """One task on each of these sessions (distinct), side by side, each under `deadline_s` from when it was
        sent; one outcome per task, in order. A session whose worker timed out, crashed or broke the protocol is
        ended (its worker killed, never replaced: the state it held is gone), and every later task on it is a
        "crashed" outcome at once."""
        sessions = [session for session, _ in tasks]
        if len(set(map(id, sessions))) != len(sessions):
            raise ValueError("run_sessions takes one task per session")
        outcomes: list[Outcome | None] = [None] * len(tasks)
        held: dict[Session, tuple[int, int, float]] = {}  # session -> (task index, seq, expiry)
        for index, (session, task) in enumerate(tasks):
            if session.ended:
                outcomes[index] = Outcome("crashed", detail=session.ended)
                continue
            seq = next(self._seq)
            try:
                session.worker.conn.send((seq, task))
            except OSError:  # the worker died: its end-of-file settles the task below
                pass
            held[session] = (index, seq, time.monotonic() + deadline_s)
        while held:
            timeout = max(0.0, min(expiry for _, _, expiry in held.values()) - time.monotonic())
            ready = multiprocessing.connection.wait([session.worker.conn for session in held], timeout=timeout)
            now = time.monotonic()
            for session, (index, seq, expiry) in list(held.items()):
                if session.worker.conn in ready:
                    outcome = session.receive(seq)
                    if outcome is None:
                        continue
                elif now >= expiry:
                    outcome = Outcome("timeout", detail=f"no answer within the deadline; {session.worker.name} was killed")
                    session.end(f"{session.worker.name} was killed at a deadline")
                else:
                    continue
                del held[session]
                outcomes[index] = outcome
        for session in sessions:
            if session.ended:
                self._forget(session.worker)
        return outcomes

    def close_session(self, session: "Session") -> None:
        """Kill the session's worker (what it held goes with it)."""
        session.end("the session was closed")
        self._forget(session.worker)

    def _forget(self, worker: _Worker) -> None:
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)

    def pids(self) -> list[int]:
        """The zygote's and the live workers' process ids."""
        return [z.process.pid for z in self._zygotes] + [w.pid for w in self._workers]

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _spawn_locked(self) -> _Worker:
        zygote = self._zygotes[0]
        if not zygote.is_alive():  # killed from outside: a new one runs the initializer again
            zygote.stop()
            zygote = self._zygotes[0] = _Zygote(self._name, self._setup)
            zygote.await_ready()
        pid, conn = zygote.fork()
        worker = _Worker(f"{self._name}-{next(self._names)}", pid, conn, zygote)
        self._workers.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> _Worker:
        worker.kill()
        with self._lock:
            if worker in self._workers:
                self._workers.remove(worker)
            if self._closed:
                raise RuntimeError(f"{self._name}: the pool was closed while tasks were running")
            return self._spawn_locked()

    def _take(self, block: bool) -> _Worker | None:
        """An idle worker; one that died while idle (killed from outside, OOM) is replaced before it gets a task."""
        try:
            worker = self._idle.get(block=block)
        except queue.Empty:
            return None
        return worker if worker.is_alive_idle() else self._replace(worker)

    def _receive(self, worker: _Worker, seq: int) -> tuple[Outcome | None, _Worker] | None:
        """Read what the worker's pipe holds. None while its reply is incomplete; else the outcome it settles (None:
        a reply out of turn, to run again) and the worker to go on with, a replacement when it died or broke the
        protocol (a reply too large, not JSON, of the wrong shape)."""
        try:
            message = worker.reader.feed()
        except (EOFError, OSError):
            description = worker.exit_description()
            return Outcome("crashed", detail=f"{worker.name} {description}"), self._replace(worker)
        except ProtocolError as err:
            return Outcome("error", detail=f"{worker.name} {err}; it was killed and replaced"), self._replace(worker)
        if message is _PENDING:
            return None
        if not (
            isinstance(message, list) and len(message) == 3 and type(message[0]) is int and message[1] in ("ok", "error")
            and (message[1] == "ok" or isinstance(message[2], str))
        ):
            detail = f"{worker.name} sent a reply of the wrong shape; it was killed and replaced"
            return Outcome("error", detail=detail), self._replace(worker)
        reply_seq, kind, payload = message
        if reply_seq != seq:
            return None, self._replace(worker)
        if kind == "ok":
            return Outcome("ok", value=payload), worker
        return Outcome("error", detail=payload), worker


class Session:
    """A worker held by one sequence of tasks (`WorkerPool.session`); `ended` says why it can run no more ("" while
    it can)."""

    def __init__(self, worker: _Worker):
        self.worker = worker
        self.ended = ""

    def receive(self, seq: int) -> Outcome | None:
        """The outcome the worker's pipe settles (None while its reply is incomplete); a death, a reply out of turn
        or one that breaks the protocol ends the session."""
        worker = self.worker
        try:
            message = worker.reader.feed()
        except (EOFError, OSError):
            description = worker.exit_description()
            self.end(f"{worker.name} {description}")
            return Outcome("crashed", detail=f"{worker.name} {description}")
        except ProtocolError as err:
            self.end(f"{worker.name} {err}")
            return Outcome("error", detail=f"{worker.name} {err}; it was killed")
        if message is _PENDING:
            return None
        if not (
            isinstance(message, list) and len(message) == 3 and message[0] == seq and message[1] in ("ok", "error")
            and (message[1] == "ok" or isinstance(message[2], str))
        ):
            self.end(f"{worker.name} sent a reply of the wrong shape or out of turn")
            return Outcome("error", detail=f"{worker.name} sent a reply of the wrong shape or out of turn; it was killed")
        _, kind, payload = message
        return Outcome("ok", value=payload) if kind == "ok" else Outcome("error", detail=payload)

    def end(self, why: str) -> None:
        if not self.ended:
            self.ended = why
        self.worker.kill()


class ProtocolError(Exception):
    """A process sent something that is not a message: too large, or not JSON."""


class _MessageReader:
    """Length-prefixed JSON messages from a pipe whose writer is not trusted: `feed()` reads what the pipe holds
    (call it when it is readable, so it never blocks), refuses an announced size over `limit` before reading it,
    and gives the decoded message once it is whole (_PENDING before)."""

    def __init__(self, fd: int, limit: int):
        self.fd = fd
        self.limit = limit
        self.buffer = bytearray()

    def feed(self):
        chunk = os.read(self.fd, 1024**2)
        if not chunk:
            raise EOFError
        self.buffer += chunk
        if len(self.buffer) < _HEADER_BYTES:
            return _PENDING
        size = int.from_bytes(self.buffer[:_HEADER_BYTES], "big")
        if size > self.limit:
            raise ProtocolError(f"announced a reply of {size} bytes, over the limit of {self.limit}")
        if len(self.buffer) < _HEADER_BYTES + size:
            return _PENDING
        if len(self.buffer) > _HEADER_BYTES + size:
            raise ProtocolError("wrote more than one reply")
        payload = bytes(self.buffer[_HEADER_BYTES:])
        self.buffer.clear()
        try:
            return json.loads(payload)
        except (ValueError, RecursionError) as err:
            raise ProtocolError(f"sent a reply that is not JSON ({type(err).__name__})") from None


def _read_message(conn, reader: _MessageReader, deadline: float):
    """The next whole message on `conn` by `deadline` (time.monotonic()), else TimeoutError; a ProtocolError is
    raised as an OSError, which the callers treat as a pipe that broke."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not multiprocessing.connection.wait([conn], timeout=remaining):
            raise TimeoutError
        try:
            message = reader.feed()
        except ProtocolError as err:
            raise OSError(str(err)) from None
        if message is not _PENDING:
            return message


def _encode(message) -> bytes:
    payload = json.dumps(message, separators=(",", ":")).encode()
    return len(payload).to_bytes(_HEADER_BYTES, "big") + payload


def _write_message(fd: int, message) -> None:
    """Send one message (JSON data) on a raw pipe: the zygote's and the workers' side."""
    _write_all(fd, _encode(message))


def in_worker() -> bool:
    """Whether this process is a pool worker, which its pool kills at a deadline: hang-prone work may run here
    directly, and starting another pool here would only nest processes."""
    return _in_worker


def _expired(worker_name: str, batch_over: bool) -> Outcome:
    if batch_over:
        return Outcome("timeout", detail=f"the batch's deadline passed; {worker_name} was killed")
    return Outcome("timeout", detail=f"no answer within the deadline; {worker_name} was killed")


def _stop_all(workers: list[_Worker], zygotes: list[_Zygote]) -> None:
    for worker in workers:
        worker.kill()
    workers.clear()
    for zygote in zygotes:
        zygote.stop()
    zygotes.clear()


# -- the zygote and its workers (these run in the child processes) --------------------------------------------------


def _zygote_main(conn) -> None:
    """Set up once, then fork a worker per request until the owner's end of the pipe closes."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # sent to the owner's group; the owner decides what stops
        signal.signal(signum, signal.SIG_IGN)
    try:
        handler, initializer, initargs = conn.recv()  # unpickling imports the handler's module
        state = initializer(*initargs) if initializer is not None else None
    except BaseException as exc:
        # Plain strings: the exception's class may not import in the caller.
        message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        _write_message(conn.fileno(), ["init_error", message[:65536], isinstance(exc, UserError), traceback.format_exc()[-65536:]])
        return
    _write_message(conn.fileno(), ["ready"])
    zygote_pid = os.getpid()
    live: set[int] = set()  # workers not reaped yet
    exits: dict[int, int] = {}  # pid -> exit code of the workers reaped so far
    while True:
        try:
            if not conn.poll(REAP_INTERVAL_S):
                _reap(live, exits)
                continue
            kind, argument = conn.recv()
        except (EOFError, OSError):
            # The owner is gone. Its workers would die with us (parent-death signal), but not what they started:
            # kill each worker's whole group first.
            for pid in live:
                _kill_group(pid)
            os._exit(0)
        if kind == "fork":
            fd = multiprocessing.reduction.recv_handle(conn)
            pid = os.fork()
            if pid == 0:
                _worker_main(conn, fd, zygote_pid, handler, state)  # never returns
            os.close(fd)
            _set_own_group(pid)
            live.add(pid)
            _write_message(conn.fileno(), pid)
        elif kind == "status":
            _reap(live, exits)
            _write_message(conn.fileno(), exits.pop(argument, None))


def _reap(live: set[int], exits: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        live.discard(pid)
        exits[pid] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        while len(exits) > 4096:  # exit codes nobody asked for
            exits.pop(next(iter(exits)))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _kill_group(pid: int) -> None:
    """SIGKILL to the process group led by `pid` (a worker and anything it started), or to `pid` alone if it has
    not made its group yet."""
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, signal.SIGKILL)
            return
        except (ProcessLookupError, PermissionError):
            continue


def _set_own_group(pid: int) -> None:
    """Parent and child both call it, so the group exists before either goes on (the usual job-control idiom)."""
    try:
        os.setpgid(pid, pid)
    except (PermissionError, ProcessLookupError):  # the child got there first, or is gone already
        pass


def _die_with_parent(parent_pid: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the pipe's end-of-file is the only signal
        pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _worker_main(control, fd: int, zygote_pid: int, handler, state) -> None:
    """A forked worker's life: answer tasks until the pipe closes. Never returns into the zygote's loop."""
    try:
        global _in_worker
        _in_worker = True
        control.close()
        _set_own_group(0)
        _die_with_parent(zygote_pid)
        conn = multiprocessing.connection.Connection(fd)
        while True:
            try:
                seq, task = conn.recv()
            except (EOFError, OSError):
                return
            try:
                reply = [seq, "ok", handler(state, task)]
            except BaseException as exc:  # user code may raise SystemExit, or math-verify its BaseException timeout
                # The traceback starts at the handler: this loop's frame says nothing about the failure.
                reply = [seq, "error", "".join(traceback.format_exception(type(exc), exc, exc.__traceback__.tb_next))]
            try:
                data = _encode(reply)
            except (TypeError, ValueError, RecursionError) as exc:  # not JSON data
                data = _encode([seq, "error", f"the result is not JSON data: {type(exc).__name__}: {exc}"[:4096]])
            if len(data) - _HEADER_BYTES > MAX_REPLY_BYTES:
                data = _encode([seq, "error", f"the result is {len(data) - _HEADER_BYTES} bytes as JSON, over the limit of {MAX_REPLY_BYTES}"])
            try:
                _write_all(fd, data)
            except OSError:  # the caller is gone
                return
    finally:
        os._exit(0)
