"""The sandboxed Python tool's limits, measured: each hostile case (issue 27, point 4) run once under the default
`SandboxLimits`, with what came back, how long the call took, and what of the sandbox was still running after it.

    python benchmarks/python_tool_hostile.py

Prints a Markdown table for docs/benchmarks.md. Needs root (the sandbox does); takes about half a minute.
"""

import os
import socket
import time

from rlqa.tools.python_tool import SandboxLimits, ToolResult, run_python, sandbox_processes


def _cases(port: int) -> dict[str, str]:
    return {
        "print(2**10)": "print(2**10)",
        "exception": "print(1 / 0)",
        "sleep 60 s (wall deadline)": "import time\ntime.sleep(60)",
        "infinite loop": "while True:\n    pass",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
        "setsid daemon, then exit": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)",
        "allocate 2 GB": "x = bytearray(2 * 1024**3)",
        "write /var/tmp/x (world-writable)": "open('/var/tmp/x', 'w').write('escaped')",
        "write /tmp/x (its own tmpfs)": "open('/tmp/x', 'w').write('kept')\nprint(open('/tmp/x').read())",
        "connect to a local listener": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "kill its parent": "import os\nos.kill(os.getppid(), 9)\nprint('still here')",
        f"kill the caller (pid {os.getpid()})": f"import os\nos.kill({os.getpid()}, 9)",
        "print 100 MB": "print('x' * 100_000_000)",
    }


def _summary(result: ToolResult) -> str:
    """One cell: the error the model sees, else the last line it printed, with the exit status."""
    last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
    shown = result.error or f"exit {result.exit_status}"
    if last[0] and not result.truncated:
        shown = f"{shown}; `{last[0][:60]}`"
    return shown


def main() -> None:
    limits = SandboxLimits()
    print(
        f"Limits: wall {limits.wall_s:g} s, CPU {limits.cpu_s} s, memory {limits.memory_mb} MB, output "
        f"{limits.max_output_bytes} bytes, {limits.processes} processes, file {limits.file_mb} MB, "
        f"tmpfs {limits.disk_mb} MB.\n"
    )
    print("| case | result | call s | sandbox processes left |")
    print("|---|---|---|---|")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for name, code in _cases(listener.getsockname()[1]).items():
            start = time.monotonic()
            result = run_python(code, limits=limits)
            elapsed = time.monotonic() - start
            print(f"| {name} | {_summary(result)} | {elapsed:.2f} | {len(sandbox_processes())} |", flush=True)
    escaped = [path for path in ("/tmp/x", "/var/tmp/x") if os.path.exists(path)]
    print(f"\nAfter all: on the machine, /tmp/x or /var/tmp/x: {escaped or 'neither'}; the caller is alive.")


if __name__ == "__main__":
    main()
