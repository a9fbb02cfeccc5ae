"""The sandboxed Python tool against ordinary and hostile code. Every test ends with nothing of the sandbox running
(no process of a sandbox uid, no keeper, no private directory left) and this process unharmed."""

import os
import socket
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from rlqa.tools.python_tool import SANDBOX_INIT, UID_BASE, SandboxLimits, ToolResult, python, run_python

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (namespaces, mounts, a fresh uid)")

FAST = SandboxLimits(wall_s=3.0, cpu_s=1)


def _private_dirs() -> set[str]:
    return {str(path) for path in Path(tempfile.gettempdir()).glob("rlqa-python-*")}


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After each test: no process of any sandbox (found by psutil, independently of the tool's own check), no
    keeper, no private directory, and this process still here."""
    before = _private_dirs()
    yield
    sandboxed = [
        process.info
        for process in psutil.process_iter(["pid", "uids", "cmdline"])
        if process.info["uids"] and process.info["uids"].real >= UID_BASE
        or str(SANDBOX_INIT) in " ".join(process.info["cmdline"] or ())
    ]
    assert sandboxed == []
    assert _private_dirs() - before == set()
    assert psutil.Process(os.getpid()).is_running()


def test_prints_a_hand_checked_value():
    result = run_python("print(2**10)")
    # 2**10 = 1024
    assert result == ToolResult(stdout="1024\n", stderr="", exit_status=0)
    assert result.for_model() == "1024"


def test_plain_function_returns_the_text():
    assert python("print(6 * 7)") == "42"  # 6 * 7 = 42


def test_an_exception_comes_back_as_its_traceback():
    result = run_python("x = 1\nprint(x / 0)")
    assert result.exit_status == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert 'main.py", line 2' in result.stderr  # the division is on the second line
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert result.for_model().endswith("ZeroDivisionError: division by zero\n[exit status 1]")


def test_the_wall_deadline_kills_a_sleeper():
    start = time.monotonic()
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(60)", limits=FAST)
    elapsed = time.monotonic() - start
    assert result.timed_out and result.exit_status is None
    assert result.stdout == "started\n"
    assert result.error == "timed out: the program was killed after 3 s"
    assert 3.0 <= elapsed < 6.0


def test_an_infinite_loop_stops_at_its_cpu_limit():
    start = time.monotonic()
    result = run_python("while True:\n    pass", limits=SandboxLimits(wall_s=10.0, cpu_s=1))
    assert result.exit_status == -24  # SIGXCPU is signal 24 on Linux
    assert result.error == "CPU time limit of 1 s exceeded: the program was killed"
    assert time.monotonic() - start < 5.0  # 1 s of CPU, on a busy 2-core machine


def test_a_fork_bomb_is_bounded_and_killed():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = run_python(bomb, limits=FAST)
    assert result.timed_out


def test_processes_are_counted_per_sandbox():
    code = """
import os, time
children = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as error:
    print(children, error.strerror)
"""
    result = run_python(code, limits=SandboxLimits(processes=8, wall_s=5.0))
    # RLIMIT_NPROC 8 counts the init and the code itself, so 8 - 2 = 6 forks succeed; the seventh fails with EAGAIN
    assert result.stdout == "6 Resource temporarily unavailable\n"


def test_a_daemon_it_leaves_dies_with_it():
    code = """
import os, time
if os.fork() == 0:
    os.setsid()  # out of the process group and the session
    time.sleep(60)
print("parent done")
"""
    result = run_python(code, limits=FAST)
    assert result == ToolResult(stdout="parent done\n", stderr="", exit_status=0)  # the fixture finds no daemon


def test_it_runs_with_no_privileges():
    code = """
import os
print(os.getuid(), os.getgid(), os.getgroups())
print([line for line in open("/proc/self/status") if line.startswith(("CapEff", "NoNewPrivs"))])
"""
    uid, status = run_python(code).stdout.splitlines()
    uid, gid, groups = uid.split(" ", 2)
    assert int(uid) >= UID_BASE and gid == uid and groups == "[]"
    assert status == "['CapEff:\\t0000000000000000\\n', 'NoNewPrivs:\\t1\\n']"


def test_two_gigabytes_are_refused():
    result = run_python("x = bytearray(2 * 1024**3)\nprint('allocated')", limits=FAST)
    assert result.stdout == ""
    assert result.stderr.rstrip().endswith("MemoryError")
    assert result.exit_status == 1


def test_writes_outside_its_directory_fail(tmp_path):
    targets = [tmp_path / "escaped.txt", Path("/tmp/x-rlqa-sandbox"), Path("/work/escaped.txt")]
    code = f"""
import os
for target in {[str(target) for target in targets]!r}:
    try:
        open(target, "w").write("escaped")
        print("wrote", target)
    except OSError as error:
        print(error.strerror)
open("inside.txt", "w").write("kept")
print(open("inside.txt").read(), os.getcwd())
"""
    result = run_python(code, limits=FAST)
    lines = result.stdout.splitlines()
    # pytest's directory is also closed to other uids; /tmp is open to all, so only the read-only mount stops it
    assert lines[0] in ("Permission denied", "Read-only file system")
    assert lines[1:3] == ["Read-only file system"] * 2
    kept, private = lines[3].split()
    assert kept == "kept"
    assert not any(target.exists() for target in targets)
    assert not Path(private).exists()  # the private directory went with the sandbox


def test_a_socket_cannot_reach_a_listener():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        code = f"""
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2)
    print("connected")
except OSError as error:
    print(error.strerror)
"""
        result = run_python(code, limits=FAST)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()  # nothing ever connected
    assert result.stdout == "Network is unreachable\n"


def test_killing_its_parent_leaves_the_caller_alive():
    code = f"""
import os, signal
for pid in ({os.getpid()}, os.getppid()):
    try:
        os.kill(pid, signal.SIGKILL)
        print("killed", pid)
    except OSError as error:
        print(pid, error.strerror, flush=True)
"""
    result = run_python(code, limits=FAST)
    # this process is invisible from the sandbox's PID namespace; the code's parent is the sandbox's init (PID 1),
    # which the kernel shields from signals sent inside its namespace: the call succeeds and the init lives on
    assert result.stdout == f"{os.getpid()} No such process\nkilled 1\n"
    assert result.exit_status == 0


def test_a_hundred_megabytes_of_output_are_cut_short():
    start = time.monotonic()
    result = run_python("print('x' * 100_000_000)", limits=SandboxLimits(max_output_bytes=1000))
    assert result.truncated and result.exit_status is None
    assert result.stdout == "x" * 1000
    assert result.error == "output truncated at 1000 bytes: the program was stopped"
    assert time.monotonic() - start < 3.0
