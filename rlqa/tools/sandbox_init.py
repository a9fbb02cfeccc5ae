"""The sandbox's own first program: run as root by `python_tool.run_python`, it builds the jail, drops every
privilege and execs the interpreter on the model's code. Standard library only (it runs under `python -I -S`).

Two processes, because a new PID namespace takes effect for children only:

- the *keeper* (this script's first process, in the caller's PID namespace, leader of a fresh session and process
  group) unshares mount, network, PID, IPC and UTS namespaces, forks the init, tells the caller the init's pid and
  waits for it. It dies with its parent (parent-death signal);
- the *init* (PID 1 of the new PID namespace) mounts the jail, sets the limits, becomes a fresh unprivileged uid,
  runs the code in a child and reports its exit status. It dies with the keeper (parent-death signal), and when it
  dies the kernel kills every process left in its namespace, including any that left the process group (`setsid`).
  So killing the init, or the keeper's group, kills all of it.

The jail (mount namespace, private to the sandbox):
- `/` and every mount under it are remounted read-only, so nothing outside the private directory can be written, by
  any uid (it cannot remount: it has no capabilities). A remount by path reaches the top mount at that path; one
  stacked under it (the container's /dev/shm is mounted twice) keeps its flags, but no path leads to it;
- the private directory is a fresh tmpfs of `disk_mb` mounted on /tmp (hiding the machine's /tmp), owned by the
  sandbox uid; it exists in the namespace only, so it vanishes with the sandbox and leaves nothing on disk, however
  the caller ends;
- a fresh /proc shows the sandbox's own processes only;
- the interpreter's directories under a directory the sandbox uid may not enter (pyenv under /root, mode 700) are
  bind-mounted, read-only, onto a tmpfs that hides the rest of that directory.
The network namespace has only its own loopback interface, down: no connection leaves the sandbox (it may bind
127.0.0.1 of its own namespace, which nothing outside reaches). Abstract Unix sockets belong to the network
namespace too; a filesystem Unix socket needs write permission on its file, so the sandbox reaches only
world-writable ones outside /tmp (those under /tmp, Ray's among them, are hidden by the private tmpfs).
"""

import ctypes
import json
import os
import re
import resource
import signal
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC = 32, 1024, 2048, 4096, 16384
MS_PRIVATE, MS_RELATIME, MS_STRICTATIME = 1 << 18, 1 << 21, 1 << 24
# Per-mount flags a read-only bind remount must keep (the kernel refuses to clear locked ones).
MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SETUP_FAILED = 127
WORKDIR = "/tmp"  # in the sandbox: its private tmpfs

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: None if text is None else text.encode()  # noqa: E731
    result = _libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data))
    _check(result, f"mount {target}")


def _die_with_parent() -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")


def _mount_points() -> list[tuple[str, int]]:
    """Every mount point of this namespace with the per-mount flags to keep, in mount order."""
    points = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            path = re.sub(r"\\([0-7]{3})", lambda escape: chr(int(escape[1], 8)), fields[4])  # \040 is a space
            flags = 0
            for option in fields[5].split(","):
                flags |= MOUNT_OPTION_FLAGS.get(option, 0)
            points.append((path, flags))
    return points


def _hidden_ancestor(path: str) -> str | None:
    """The top-most directory on `path` that other users may not enter, or None."""
    current = "/"
    for part in path.strip("/").split("/"):
        current = os.path.join(current, part)
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _reveal(paths: list[str]) -> None:
    """Make each of `paths` reachable by any uid: a tmpfs over its hidden ancestor, the path bound back onto it.

    Every path is opened before anything is mounted (a tmpfs hides what lies under it); a path inside one already
    revealed comes with it."""
    revealed: list[tuple[str, str, int]] = []  # (path, hidden ancestor, handle on the path)
    for path in sorted(set(paths)):
        ancestor = _hidden_ancestor(path) if os.path.isdir(path) else None
        if ancestor is not None and not any(path.startswith(done + "/") for done, _, _ in revealed):
            revealed.append((path, ancestor, os.open(path, os.O_PATH | os.O_DIRECTORY)))
    covered = set()
    for path, ancestor, handle in revealed:
        if ancestor not in covered:
            _mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            covered.add(ancestor)
        os.makedirs(path, mode=0o755, exist_ok=True)  # in the tmpfs
        _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
        os.close(handle)


def _make_jail(config: dict, code: bytes) -> None:
    """Mount namespace as the module docstring says; WORKDIR becomes the private tmpfs holding main.py."""
    uid = config["uid"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _reveal(config["reveal"])
    for point, flags in _mount_points():
        _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags)
    options = f"size={config['disk_mb']}m,nr_inodes=4096,mode=0700,uid={uid},gid={uid}"
    _mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, options)
    script = os.path.join(WORKDIR, "main.py")
    with open(script, "wb") as target:
        target.write(code)
    os.chown(script, uid, uid)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _set_limits(config: dict) -> None:
    mb = 1024 * 1024
    cpu = config["cpu_s"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU at cpu seconds, SIGKILL one later
    resource.setrlimit(resource.RLIMIT_AS, (config["memory_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NPROC, (config["processes"],) * 2)  # counted per uid: this uid is fresh
    resource.setrlimit(resource.RLIMIT_FSIZE, (config["file_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (config["open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _become_nobody(uid: int) -> None:
    """A uid no file and no other process has; every capability goes with uid 0, and no setuid binary brings one
    back."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    # The init stays undumpable (the code's exec makes the code dumpable again): the code, of the same uid, cannot
    # open the init's /proc/1/fd and write to the status pipe, whatever fs.suid_dumpable says.
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    _die_with_parent()  # a credential change clears the parent-death signal


def _init(config: dict, code: bytes, status_fd: int) -> None:
    """PID 1 of the sandbox: jail, limits, uid, then run the code in a child and report how it ended. Never returns.

    The code is not PID 1 itself: the kernel drops the signals it generates for a namespace's init (SIGXCPU at the
    CPU limit, for one), and the init reaps the orphans the code leaves. The init's own exit, right after the code's,
    makes the kernel kill whatever the code left running."""
    _die_with_parent()
    _make_jail(config, code)
    _set_limits(config)
    _become_nobody(config["uid"])
    os.chdir(WORKDIR)
    os.set_inheritable(status_fd, False)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": WORKDIR,
        "TMPDIR": WORKDIR,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    code = os.fork()
    if code == 0:
        os.close(status_fd)
        try:
            os.execve(config["python"], [config["python"], "-I", "main.py"], env)
        finally:
            os._exit(SETUP_FAILED)
    while True:
        pid, wait_status = os.wait()
        if pid == code:
            break
    _report(status_fd, {"exit": os.waitstatus_to_exitcode(wait_status)})
    os._exit(0)


def _report(status_fd: int, message: dict) -> None:
    os.write(status_fd, (json.dumps(message) + "\n").encode())


def main() -> None:
    config = json.loads(sys.argv[1])
    status_fd = config["status_fd"]
    code = sys.stdin.buffer.read()  # the caller writes the code, then closes the pipe
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)  # the code's stdin is empty
    try:
        _die_with_parent()
        if os.getppid() != config["parent"]:  # the caller died before the signal was set
            os._exit(SETUP_FAILED)
        config["uid"] = config["uid_base"] + os.getpid()  # unique among live sandboxes
        flags = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS
        _check(_libc.unshare(flags), "unshare")
    except OSError as error:
        _report(status_fd, {"setup_error": str(error)})
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        try:
            _init(config, code, status_fd)
        except BaseException as error:  # noqa: BLE001 - anything here means no sandbox: report it, run nothing
            _report(status_fd, {"setup_error": f"{type(error).__name__}: {error}"})
        os._exit(SETUP_FAILED)
    _report(status_fd, {"init": pid})
    os.waitpid(pid, 0)
    os._exit(0)


if __name__ == "__main__":
    main()
