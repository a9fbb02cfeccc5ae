"""The sandboxed Python tool against ordinary and hostile code. Every test ends with nothing of the sandbox running
(no process of a sandbox uid, no keeper left) and this process unharmed."""

import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from rlqa.tools.python_tool import (
    SANDBOX_INIT,
    UID_BASE,
    SandboxLimits,
    ToolResult,
    python,
    run_python,
    sandbox_processes,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (namespaces, mounts, a fresh uid)")

FAST = SandboxLimits(wall_s=3.0, cpu_s=1)
CALLER_ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # a caller in a subprocess


def _sandboxed() -> dict[int, str]:
    """Every process (zombies included) with a sandbox uid in /proc/<pid>/status, or a keeper's command line: found
    apart from the tool's own check, which reads the owner of /proc/<pid>."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, NotADirectoryError):  # not a process, or gone
            continue
        real_uid = int(status.split("\nUid:")[1].split()[0])
        if real_uid >= UID_BASE or str(SANDBOX_INIT) in command:
            found[int(entry.name)] = command
    return found


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After each test: no process of any sandbox, no keeper, and this process still here (it is running it)."""
    yield
    assert _sandboxed() == {}


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
    assert 'File "/tmp/main.py", line 2' in result.stderr  # the division is on the second line
    assert result.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert result.for_model().endswith("ZeroDivisionError: division by zero\n[exit status 1]")


def test_the_wall_deadline_kills_a_sleeper():
    start = time.monotonic()
    result = run_python("import time\nprint('started', flush=True)\ntime.sleep(60)", limits=FAST)
    elapsed = time.monotonic() - start
    assert result.timed_out and result.exit_status is None
    assert result.stdout == "started\n"
    assert result.error == "timed out: the program was killed after 3 s"
    assert 3.0 <= elapsed < 8.0  # the kill and the wait take milliseconds; the rest is a loaded machine


def test_an_infinite_loop_stops_at_its_cpu_limit():
    start = time.monotonic()
    # a wall deadline far past 1 s of CPU: on a loaded 2-core machine the loop may get a tenth of a core
    result = run_python("while True:\n    pass", limits=SandboxLimits(wall_s=30.0, cpu_s=1))
    assert result.exit_status == -24  # SIGXCPU is signal 24 on Linux
    assert result.error == "CPU time limit of 1 s exceeded: the program was killed"
    assert time.monotonic() - start < 30.0


def test_a_fork_bomb_is_bounded_and_killed():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    result = run_python(bomb, limits=SandboxLimits(wall_s=3.0))  # 5 s of CPU each: only the kill stops them in time
    assert result.timed_out
    assert time.monotonic() - start < 8.0


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


def test_it_cannot_reach_its_init():
    """The init holds the status pipe (the code's exit status): the code, though of the same uid, cannot open it."""
    code = """
import os
try:
    print(os.listdir("/proc/1/fd"))
except OSError as error:
    print(error.strerror)
"""
    assert run_python(code).stdout == "Permission denied\n"


def test_two_gigabytes_are_refused():
    result = run_python("x = bytearray(2 * 1024**3)\nprint('allocated')", limits=FAST)
    assert result.stdout == ""
    assert result.stderr.rstrip().endswith("MemoryError")
    assert result.exit_status == 1


def test_writes_outside_its_directory_fail():
    """The machine's world-writable directories (so only the read-only mounts can stop a write) and a root-owned
    one; /tmp is the sandbox's own tmpfs, so /tmp/x-rlqa is written there and never reaches the machine's /tmp."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as outside:
        os.chmod(outside, 0o777)  # open to every uid: a test directory any process could write to
        targets = [Path(outside, "x"), Path("/var/tmp/x-rlqa"), Path("/dev/shm/x-rlqa"), Path("/work/x-rlqa")]
        code = f"""
import os
for target in {[str(target) for target in targets]!r}:
    try:
        open(target, "w").write("escaped")
        print("wrote", target)
    except OSError as error:
        print(error.strerror)
open("/tmp/x-rlqa", "w").write("kept")
print(open("/tmp/x-rlqa").read(), os.getcwd())
"""
        result = run_python(code, limits=FAST)
        assert result.stdout.splitlines() == ["Read-only file system"] * 4 + ["kept /tmp"]
        assert not any(target.exists() for target in targets)
    assert not Path("/tmp/x-rlqa").exists()


def _connect_from_sandbox(listener: socket.socket, family: str, address) -> str:
    """What the sandbox prints when it connects to `address`; asserts that `listener` never saw a connection."""
    code = f"""
import socket
try:
    socket.socket(socket.{family}).connect({address!r})
    print("connected")
except OSError as error:
    print(error.strerror)
"""
    result = run_python(code, limits=FAST)
    listener.settimeout(0.2)
    with pytest.raises(TimeoutError):
        listener.accept()  # nothing ever connected
    return result.stdout


def test_a_socket_cannot_reach_a_listener():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        address = listener.getsockname()
        assert _connect_from_sandbox(listener, "AF_INET", address) == "Network is unreachable\n"


def test_a_unix_socket_under_tmp_is_out_of_reach():
    """Ray's sockets live under /tmp; a world-writable one is the worst case, and the private /tmp hides it."""
    with tempfile.TemporaryDirectory(dir="/tmp") as directory, socket.socket(socket.AF_UNIX) as listener:
        os.chmod(directory, 0o777)
        path = os.path.join(directory, "listener")
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen()
        assert _connect_from_sandbox(listener, "AF_UNIX", path) == "No such file or directory\n"


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
    assert time.monotonic() - start < 5.0  # 0.2 to 1.2 s measured; it is stopped at the first 64 KB read


def test_without_namespaces_nothing_runs(tmp_path):
    """Fail closed: a caller without CAP_SYS_ADMIN (dropped from its bounding set) cannot unshare, and the code is
    not run at all, rather than run without its isolation."""
    marker = tmp_path / "ran"
    caller = f"""
from rlqa.tools.python_tool import run_python
result = run_python("open({str(marker)!r}, 'w').write('ran')")
print(result.exit_status, result.error)
"""
    command = ["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-c", caller]
    done = subprocess.run(command, env=CALLER_ENV, capture_output=True, text=True)
    assert done.stdout == "None sandbox unavailable, nothing was run: [Errno 1] unshare: Operation not permitted\n"
    assert not marker.exists()


def test_a_killed_caller_takes_its_sandbox_with_it():
    caller = "from rlqa.tools.python_tool import run_python\nrun_python('import time; time.sleep(60)')"
    process = subprocess.Popen([sys.executable, "-c", caller], env=CALLER_ENV)
    deadline = time.monotonic() + 20
    while not sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes()  # the sandbox is running
    process.kill()
    process.wait()
    deadline = time.monotonic() + 5  # the parent-death signals act at once; this allows for a busy machine
    while sandbox_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes() == []


def test_concurrent_calls_do_not_mix():
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda n: run_python(f"print({n} * {n})").stdout, range(4)))
    assert results == ["0\n", "1\n", "4\n", "9\n"]  # 0*0, 1*1, 2*2, 3*3


def test_the_tool_docstring_states_the_default_limits():
    limits = SandboxLimits()
    assert f"{limits.wall_s:g} seconds" in python.__doc__  # 10 seconds
    assert f"{limits.memory_mb // 1024} GB of memory" in python.__doc__  # 1024 MB = 1 GB
    assert f"{limits.max_output_bytes // 1024} KB of output" in python.__doc__  # 65536 bytes = 64 KB


def test_the_tool_turns_into_the_schema_chat_templates_render():
    """transformers' own converter, the one `apply_chat_template(..., tools=[python])` calls."""
    from transformers.utils import get_json_schema

    function = get_json_schema(python)["function"]
    assert function["name"] == "python"
    assert function["description"].startswith("Run Python code in a sandbox and return what it printed")
    assert function["parameters"] == {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": 'a complete Python program, for example "print(2**10)".'}
        },
        "required": ["code"],
    }
