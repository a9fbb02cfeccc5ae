"""Ray for one run: an embedded Ray that is really embedded, a cluster address checked before it is trusted, and
nothing of the run left on the machine however the run ends.

- No address (no `--address`, `RAY_ADDRESS` or `ray.address`): always a new local Ray (`address="local"`). A bare
  `ray.init()` would follow the last cluster recorded on the machine, even a dead one, and then refuse `num_cpus`.
- An address that nothing answers exits 2 with one line naming it, within `CONNECT_TIMEOUT_S` (Ray itself retries
  for minutes).
- A *reaper* process watches the driver. Every process the run starts inherits the environment variable
  `RLQA_RUN_TOKEN` (Ray's raylet and GCS, the reward workers and what they start). While the driver lives, the
  reaper keeps the list of processes that carry the token or descend from one that does (Ray's Python processes
  overwrite their environment with their title, so descent is what finds them). When the driver ends, by any means,
  SIGKILL included, the reaper kills every process on that list and every token carrier, then exits. Ray leaves
  some of its own processes behind when its driver is killed (the dashboard and runtime-env agents), and a reward
  worker stuck in C code cannot notice anything; the reaper depends on neither. Processes of a cluster joined with
  an address carry no token and descend from none, so they are never touched.
- An embedded Ray is for this machine alone: its node IP is loopback, so GCS, the raylet, the object manager and
  every actor listen on 127.0.0.1 only (Ray's own switch for a one-machine Ray, `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`,
  which it uses on macOS and Windows), and token authentication is on by rlqa's say (`RAY_AUTH_MODE=token`, with a
  fresh token for the run in `RAY_AUTH_TOKEN`, never written to disk), not by a default that Ray versions change.
  Set explicitly, the mode also makes Ray print no notice about it. A `RAY_AUTH_MODE` or `RAY_AUTH_TOKEN` of the
  user's own is kept. A joined cluster is left as its operator set it up.
- The run's shared-memory directory (`shared_dir`: the policy weights the rollout workers map,
  rlqa.rollout.shared_weights) is named after the token; the reaper deletes it last, so no 0.5 GB file outlives a
  killed run in /dev/shm.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rlqa.errors import UserError

TOKEN_VARIABLE = "RLQA_RUN_TOKEN"
CONNECT_TIMEOUT_S = 45.0
REAP_QUIET_SCANS = 3  # the reaper stops after this many scans in a row that find nothing
REAP_WATCH_INTERVAL_S = 0.5
REAP_SCAN_INTERVAL_S = 0.2
REAP_LIMIT_S = 30.0
_HOST_PORT = re.compile(r"^(?:ray://)?\[?([^\]/]+?)\]?:(\d+)$")


@contextlib.contextmanager
def ray_session(address: str | None, *, num_cpus: int, num_gpus: int | None = None, **init_kwargs) -> Iterator[None]:
    """Start (or join) Ray for one run; on leaving, shut it down and kill whatever of the run is left."""
    import ray

    with reaped():
        if address:
            _check_reachable(address)
            with _deadline(CONNECT_TIMEOUT_S, f"--address {address}: no Ray cluster answered within {CONNECT_TIMEOUT_S:.0f} s"):
                # Ray's own logging stays on: it says which cluster it joined
                ray.init(address=address, log_to_driver=True, **{**init_kwargs, "configure_logging": True})
            try:
                yield
            finally:
                ray.shutdown()
            return
        with _embedded_environment():
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **init_kwargs)
            try:
                yield
            finally:
                ray.shutdown()


# Ray's switches for an embedded, one-machine Ray (see the module docstring); read by Ray's processes at start.
LOOPBACK_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_VARIABLE, AUTH_TOKEN_VARIABLE = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"


@contextlib.contextmanager
def _embedded_environment() -> Iterator[None]:
    """Loopback only and token authentication for the embedded Ray started inside; the environment (and Ray's
    copies of it in this process, read when ray was imported) restored on leaving."""
    import ray._private.ray_constants as ray_constants

    settings = {LOOPBACK_VARIABLE: "0", AUTH_MODE_VARIABLE: "token", AUTH_TOKEN_VARIABLE: uuid.uuid4().hex + uuid.uuid4().hex}
    previous = {name: os.environ.get(name) for name in settings}
    if previous[AUTH_MODE_VARIABLE] is not None:  # the user's explicit choice, and then their token too
        settings.pop(AUTH_MODE_VARIABLE)
        settings.pop(AUTH_TOKEN_VARIABLE)
    elif previous[AUTH_TOKEN_VARIABLE]:
        settings.pop(AUTH_TOKEN_VARIABLE)
    cluster = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(settings)
    ray_constants.ENABLE_RAY_CLUSTER = False  # what the variable sets when ray is imported after it
    _reload_ray_config()
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        ray_constants.ENABLE_RAY_CLUSTER = cluster
        _reload_ray_config()


def _reload_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config when it is imported, and caches the token once read; re-read both
    (as ray does itself when it turns token authentication on), so a second run in this process uses its own token."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@contextlib.contextmanager
def reaped() -> Iterator[str]:
    """Tag every process started inside with a fresh run token, and make sure none of them outlives this one."""
    token = uuid.uuid4().hex
    previous = os.environ.get(TOKEN_VARIABLE)
    os.environ[TOKEN_VARIABLE] = token
    reaper = subprocess.Popen(
        [sys.executable, "-m", "rlqa.cluster", str(os.getpid()), token],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,  # a signal to the run's process group must not reach the reaper
        env={k: v for k, v in os.environ.items() if k != TOKEN_VARIABLE},
    )
    try:
        yield token
    finally:
        if previous is None:
            os.environ.pop(TOKEN_VARIABLE, None)
        else:
            os.environ[TOKEN_VARIABLE] = previous
        reaper.stdin.close()  # the same end-of-file as the driver's death: the reaper kills what is left, and exits
        try:
            reaper.wait(timeout=REAP_LIMIT_S + 5)
        except subprocess.TimeoutExpired:
            reaper.kill()


def shared_dir(token: str) -> Path:
    """The run's directory in shared memory (/dev/shm; the temporary directory where there is none)."""
    base = Path("/dev/shm")
    return (base if base.is_dir() else Path(tempfile.gettempdir())) / f"rlqa-{token}"


def processes_with_token(token: str) -> list[int]:
    """Process ids whose environment carries this run's token (Linux /proc; empty elsewhere)."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    found = []
    for pid in _pids():
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:  # gone, or not ours to read
            continue
        if needle in environ.split(b"\0"):
            found.append(pid)
    return found


def session_processes(session_id: int) -> dict[int, str]:
    """Live processes of one session (pid -> command line), found by session id, not by name; zombies excluded.
    A run started in its own session (`setsid`, `start_new_session=True`) can be checked for leftovers with it."""
    found = {}
    for pid in _pids():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, session, ...
        if int(fields[3]) == session_id and fields[0] != "Z":
            found[pid] = command
    return found


def remaining(session_id: int, within_s: float = 10.0) -> dict[int, str]:
    """What of a session is still alive after waiting up to `within_s` for it to end."""
    deadline = time.monotonic() + within_s
    while (alive := session_processes(session_id)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive


def _pids() -> list[int]:
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    return [int(entry.name) for entry in proc.iterdir() if entry.name.isdigit() and int(entry.name) != os.getpid()]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (command)", which may hold spaces
    return int(fields[1]), int(fields[19])


def _run_processes(token: str, known: dict[int, int]) -> dict[int, int]:
    """The run's live processes (pid -> start time): token carriers, their descendants, and those seen before."""
    stats = {pid: stat for pid in _pids() if (stat := _stat(pid)) is not None}
    run = {pid: stats[pid][1] for pid in processes_with_token(token) if pid in stats}
    run |= {pid: start for pid, start in known.items() if pid in stats and stats[pid][1] == start}
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    todo = list(run)
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in run:
                run[child] = stats[child][1]
                todo.append(child)
    return run


def _reap(token: str, known: dict[int, int]) -> None:
    """Kill the run's processes until a few scans in a row find none (a dying Ray may still be starting some)."""
    quiet, deadline = 0, time.monotonic() + REAP_LIMIT_S
    while quiet < REAP_QUIET_SCANS and time.monotonic() < deadline:
        known = _run_processes(token, known)
        for pid in known:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        quiet = 0 if known else quiet + 1
        time.sleep(REAP_SCAN_INTERVAL_S)


def _check_reachable(address: str) -> None:
    """A host:port address must accept a TCP connection (Ray's own connect retries for minutes)."""
    match = _HOST_PORT.match(address.strip())
    if match is None:  # "auto", a dashboard URL, ...: Ray resolves those itself
        return
    host, port = match.group(1), int(match.group(2))
    try:
        with socket.create_connection((host, port), timeout=10):
            pass
    except OSError as err:
        raise UserError(f"--address {address}: no Ray cluster answers there ({err.strerror or err})") from None


@contextlib.contextmanager
def _deadline(seconds: float, message: str) -> Iterator[None]:
    """Exit 2 with `message` if the block has not finished in time (ray.init cannot be interrupted otherwise)."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            os.write(2, f"rlqa: error: {message}\n".encode())
            os._exit(2)  # the reaper cleans up what Ray had started

    threading.Thread(target=watch, daemon=True, name="rlqa-connect-deadline").start()
    try:
        yield
    finally:
        done.set()


def _reaper_main(token: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    known: dict[int, int] = {}
    # Until end-of-file (the driver closed the pipe, or died), note the run's processes now and then.
    while not select.select([sys.stdin], [], [], REAP_WATCH_INTERVAL_S)[0]:
        known = _run_processes(token, known)
    if sys.stdin.buffer.read1(1):  # not end-of-file: nobody writes to the pipe, but be safe
        return
    _reap(token, known)
    shutil.rmtree(shared_dir(token), ignore_errors=True)  # after the processes: none can write it again


if __name__ == "__main__":
    _reaper_main(sys.argv[2])
