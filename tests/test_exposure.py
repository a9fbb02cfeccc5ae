"""What a run exposes (issue 28 item 11): the embedded Ray listens on loopback only and has token authentication on
by rlqa's own setting (so Ray prints no notice about it); the broadcast rendezvous store listens on one address, not
on every interface; the shared-memory weights are the run's owner's alone (0600 files in a 0700 directory)."""

import os
import stat

import psutil
import pytest
import torch

from rlqa.cluster import ray_session
from rlqa.rollout.shared_weights import write_weights
from rlqa.rollout.weight_sync import BroadcastChannel, free_port

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


def listening(pids: set[int]) -> set[tuple[int, str]]:
    """(pid, address) of every listening TCP socket of these processes."""
    return {(c.pid, c.laddr.ip) for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids}


def test_shared_weights_are_0600_in_a_0700_directory(tmp_path):
    directory = tmp_path / "rlqa-run"
    old = os.umask(0o022)  # the usual umask, which leaves new files 0644 and directories 0755
    try:
        write_weights({"w": torch.ones(3)}, directory)
        write_weights({"w": torch.ones(4)}, directory)  # a resized rewrite keeps the modes
    finally:
        os.umask(old)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in directory.iterdir()} == {"weights.bin": 0o600, "weights.json": 0o600}


def test_the_broadcast_channels_store_listens_on_the_address_it_is_given():
    port = free_port("127.0.0.1")
    channel = BroadcastChannel("127.0.0.1", port, 0, 1, torch.device("cpu"))  # rank 0 of one: hosts the store
    channel.send({"w": torch.ones(2)})
    mine = {(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert ("127.0.0.1", port) in mine
    assert not any(p == port and ip not in LOOPBACK for ip, p in mine)  # a plain TCPStore listens on "::"


@pytest.mark.integration
def test_the_embedded_ray_listens_on_loopback_only_with_token_auth_and_no_notice(capfd):
    import ray

    before = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    with ray_session(None, num_cpus=1, configure_logging=False):  # a first run in this process, with its own token
        pass

    @ray.remote(num_cpus=1)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    with ray_session(None, num_cpus=1, configure_logging=False):  # the second one starts (a token of its own)
        actor = Probe.remote()
        actor_pid = ray.get(actor.pid.remote())
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
        if before["RAY_AUTH_MODE"] is None:  # a mode of the user's own is kept
            assert os.environ["RAY_AUTH_MODE"] == "token" and len(os.environ["RAY_AUTH_TOKEN"]) == 64
        ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        sockets = listening(ours)
        assert actor_pid in {pid for pid, _ in sockets}  # the actor's own gRPC server is among them
        assert {ip for _, ip in sockets} <= LOOPBACK, sockets  # GCS, raylet, object manager, agents, actors
    assert {name: os.environ.get(name) for name in before} == before  # the environment is as it was
    assert "Token authentication" not in capfd.readouterr().err
