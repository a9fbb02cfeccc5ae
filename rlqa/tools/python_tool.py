"""A built-in Python tool for tool-integrated reasoning: run a model's code in a sandbox, return what it printed.

The building block for issue 27's tools: `python(code) -> str` is a plain typed function with a docstring, the way
TRL users write tools, so a `rollout.tools` list can name `rlqa.tools.python_tool:python`; `run_python` is the same
with its limits and a structured `ToolResult`.

Every call starts a fresh sandbox (`sandbox_init.py` says how it is built) and removes it afterwards. What the code
gets, on Linux, run as root (as rlqa runs in its containers):
- its own PID namespace, process group and session; at the wall deadline, or when its output passes
  `max_output_bytes`, the caller kills the namespace's init, then the group, and the kernel kills whatever else is
  left in the namespace (a process that called `setsid` included); when the code's main process ends, the rest go
  with it. Nothing of it outlives the call (the call waits until none of its processes is left), nor the caller
  (parent-death signals);
- no network: a network namespace whose only interface, loopback, is down;
- a fresh unprivileged uid (`UID_BASE` + the keeper's pid, unique among live sandboxes) with no capabilities and
  `no_new_privs`: it cannot signal the caller or any other process outside (they are also invisible to it), and
  RLIMIT_NPROC, counted per uid, bounds its processes and threads alone;
- a read-only view of the whole filesystem, except a private tmpfs of `disk_mb` on /tmp (the machine's /tmp is
  hidden) that is its working directory, HOME and TMPDIR; it exists only in the sandbox's mount namespace, so it
  vanishes with the sandbox and nothing is left on disk, even when the caller is killed;
- RLIMIT_CPU, RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE, RLIMIT_NOFILE from `SandboxLimits`; no core dumps.
Reading is not prevented: the code may read what any user may read (system files, the interpreter, world-readable
project files), not the caller's private files (root's home is hidden).

What works where. In rlqa's container (root with every capability; Python 3.11, which has no `os.unshare`),
unshare(1) succeeds with `-n`, `-m`, `-p -f`, `-U` and `--net --map-root-user`; the sandbox makes the same
unshare(2) and mount(2) calls itself through ctypes, so it needs no external tool. Without root, a user namespace
(`--map-root-user`) would still give the PID, mount and network isolation, but not a fresh uid: the code would run
as the caller's own uid, sharing its RLIMIT_NPROC count and its files' permissions. That is not implemented: where
the namespaces or the uid change cannot be made (not root, no CAP_SYS_ADMIN, seccomp forbidding unshare or mount),
`run_python` fails closed. It runs nothing and returns a `ToolResult` whose `error` says why, since a tool that
silently loses its isolation is worse than one that refuses.

Why not the reward pool's zygote (rewards/workers.py): its workers are forks that run a handler in-process with the
pool's state, while each sandbox needs fresh namespaces, a fresh uid and a clean interpreter, so every call is a
new process anyway; a plain `subprocess.Popen` (fork+exec, no `preexec_fn`) is also safe to call from a threaded
Ray actor.
"""

import contextlib
import json
import os
import selectors
import signal
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

UID_BASE = 1_000_000_000  # + a pid: far above any uid a system hands out
SANDBOX_INIT = Path(__file__).with_name("sandbox_init.py")
READ_CHUNK = 65536
GONE_WITHIN_S = 5.0  # the kernel empties a PID namespace in milliseconds; this bounds a stuck one


@dataclass(frozen=True)
class SandboxLimits:
    """What one call may use. The defaults suit arithmetic and small numeric scripts."""

    wall_s: float = 10.0  # wall-clock deadline: the whole sandbox is killed at it
    cpu_s: int = 5  # RLIMIT_CPU, seconds of CPU time
    memory_mb: int = 1024  # RLIMIT_AS, address space of each process
    max_output_bytes: int = 65536  # stdout and stderr together; more stops the program
    processes: int = 32  # RLIMIT_NPROC: processes and threads of the sandbox's uid
    file_mb: int = 16  # RLIMIT_FSIZE: the largest file it may write
    disk_mb: int = 32  # size of its private tmpfs
    open_files: int = 64  # RLIMIT_NOFILE


@dataclass(frozen=True)
class ToolResult:
    """What became of one call. `exit_status` is the code's exit code, or minus the signal that killed it (None if
    it never ran or was killed by the caller); `error` is a sentence for the model, empty when the code ran and
    exited by itself."""

    stdout: str
    stderr: str
    exit_status: int | None
    timed_out: bool = False
    truncated: bool = False
    error: str = ""

    def for_model(self) -> str:
        """The text a model sees: stdout, then stderr (a traceback), then the error, if any."""
        parts = [text.rstrip("\n") for text in (self.stdout, self.stderr) if text.strip()]
        if self.error:
            parts.append(f"[{self.error}]")
        return "\n".join(parts) if parts else "[no output]"


def python(code: str) -> str:
    """Run Python code in a sandbox and return what it printed (stdout, then any error or traceback).

    The code runs as a fresh script with no network and a private, temporary working directory, under limits of
    10 seconds, 1 GB of memory and 64 KB of output. Use print() to show results.

    Args:
        code: a complete Python program, for example "print(2**10)".
    """
    return run_python(code).for_model()


def run_python(
    code: str, *, limits: SandboxLimits = SandboxLimits(), interpreter: str = sys.executable
) -> ToolResult:
    """Run `code` with `interpreter` (this one by default, so the code can import what rlqa's environment holds) in
    a fresh sandbox (module docstring) under `limits`; never raises for what the code does."""
    status_read, status_write = os.pipe()
    try:
        config = _config(limits, interpreter, status_write)
        started = time.monotonic()
        keeper = subprocess.Popen(
            [sys.executable, "-I", "-S", str(SANDBOX_INIT), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(status_write,),
            start_new_session=True,
            env={},
        )
        os.close(status_write)
        status_write = -1
        messages = []
        try:
            _send(keeper, code)
            output, messages, reason = _collect(keeper, status_read, limits, started)
        finally:
            _stop(keeper, next((message["init"] for message in messages if "init" in message), None))
        return _result(output, messages, reason, limits)
    finally:
        for fd in (status_read, status_write):
            if fd >= 0:
                os.close(fd)


def _send(keeper: subprocess.Popen, code: str) -> None:
    """Hand the code to the keeper, which reads it all before anything else (so a long program cannot block us)."""
    with contextlib.suppress(BrokenPipeError):  # the keeper died at its start: the status pipe says why
        try:
            keeper.stdin.write(code.encode())
        finally:
            keeper.stdin.close()


def _config(limits: SandboxLimits, interpreter: str, status_fd: int) -> dict:
    """What sandbox_init.py needs, as JSON-able data. `reveal`: the directories the sandbox's uid must be able to
    read even where they lie under one closed to it: the interpreter's own, and this environment's prefixes,
    standard library and site-packages."""
    reveal = [os.path.dirname(os.path.realpath(interpreter)), sys.base_prefix, sys.prefix]
    reveal += [sysconfig.get_paths()["stdlib"], *site.getsitepackages()]
    return {
        "python": interpreter,
        "parent": os.getpid(),
        "uid_base": UID_BASE,
        "status_fd": status_fd,
        "reveal": [os.path.realpath(path) for path in reveal],
        "cpu_s": limits.cpu_s,
        "memory_mb": limits.memory_mb,
        "processes": limits.processes,
        "file_mb": limits.file_mb,
        "disk_mb": limits.disk_mb,
        "open_files": limits.open_files,
    }


def _collect(keeper: subprocess.Popen, status_fd: int, limits: SandboxLimits, started: float):
    """Read stdout, stderr and the status pipe until all close, the deadline passes or the output is too long.
    Returns ({"stdout": bytes, "stderr": bytes}, the status pipe's messages, "" or "timeout" or "truncated")."""
    output = {"stdout": bytearray(), "stderr": bytearray()}
    status = bytearray()
    selector = selectors.DefaultSelector()
    selector.register(keeper.stdout, selectors.EVENT_READ, output["stdout"])
    selector.register(keeper.stderr, selectors.EVENT_READ, output["stderr"])
    selector.register(status_fd, selectors.EVENT_READ, status)
    deadline = started + limits.wall_s
    reason = ""
    with selector:
        while selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                reason = "timeout"
                break
            for key, _ in selector.select(timeout=left):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
            if len(output["stdout"]) + len(output["stderr"]) > limits.max_output_bytes or len(status) > READ_CHUNK:
                reason = "truncated"
                break
    return output, _messages(status), reason


def _messages(status: bytes) -> list[dict]:
    """The status pipe's JSON lines. Only the keeper and the init hold it, but a line that is not a JSON object is
    skipped rather than trusted or raised on."""
    messages = []
    for line in status.decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            message = json.loads(line)
            if isinstance(message, dict):
                messages.append(message)
    return messages


def _stop(keeper: subprocess.Popen, init: int | None) -> None:
    """Kill the init (the kernel then kills what is left in its PID namespace, and the keeper reaps it), then the
    keeper's group, and wait for every process of the sandbox to go.

    The init first: killed first, the keeper would leave the init, dead of its parent-death signal, a zombie until
    the machine's init reaps it. The init is signalled through a pidfd, once its parent is known to be the keeper,
    which we have not reaped: so the signal cannot reach a process that took a recycled pid."""
    if init is not None and keeper.poll() is None:
        try:
            handle = os.pidfd_open(init)
        except ProcessLookupError:
            handle = None
        if handle is not None:
            try:
                if _parent(init) == keeper.pid:
                    signal.pidfd_send_signal(handle, signal.SIGKILL)
            finally:
                os.close(handle)
        try:
            keeper.wait(timeout=GONE_WITHIN_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(keeper.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    keeper.wait()
    keeper.stdout.close()
    keeper.stderr.close()
    uid = UID_BASE + keeper.pid
    deadline = time.monotonic() + GONE_WITHIN_S
    while sandbox_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[1])  # after "pid (command) state"


def sandbox_processes(uid: int | None = None) -> list[int]:
    """Live processes (zombies included) of the sandbox with this uid, or of any sandbox: /proc/<pid> belongs to
    the process's uid."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                owner = entry.stat().st_uid
            except OSError:  # gone
                continue
            if owner == uid or (uid is None and owner >= UID_BASE):
                found.append(int(entry.name))
    return found


def _result(output: dict, messages: list[dict], reason: str, limits: SandboxLimits) -> ToolResult:
    """The ToolResult for what `_collect` saw, with a model-facing error for each way the code was stopped."""
    budget = limits.max_output_bytes
    stdout, stderr = bytes(output["stdout"]), bytes(output["stderr"])
    if reason == "truncated":
        stdout = stdout[:budget]
        stderr = stderr[: max(0, budget - len(stdout))]
    text = {"stdout": stdout.decode(errors="replace"), "stderr": stderr.decode(errors="replace")}
    setup = next((message["setup_error"] for message in messages if "setup_error" in message), None)
    exit_status = next((message["exit"] for message in messages if "exit" in message), None)
    if setup is not None:
        return ToolResult(**text, exit_status=None, error=f"sandbox unavailable, nothing was run: {setup}")
    if reason == "timeout":
        error = f"timed out: the program was killed after {limits.wall_s:g} s"
        return ToolResult(**text, exit_status=None, timed_out=True, error=error)
    if reason == "truncated":
        error = f"output truncated at {budget} bytes: the program was stopped"
        return ToolResult(**text, exit_status=None, truncated=True, error=error)
    return ToolResult(**text, exit_status=exit_status, error=_exit_error(exit_status, limits))


def _exit_error(exit_status: int | None, limits: SandboxLimits) -> str:
    if exit_status is None:
        return "the sandbox ended without reporting an exit status"
    if exit_status == -signal.SIGXCPU:
        return f"CPU time limit of {limits.cpu_s} s exceeded: the program was killed"
    if exit_status < 0:
        return f"the program was killed by {signal.Signals(-exit_status).name}"
    if exit_status != 0:
        return f"exit status {exit_status}"
    return ""
