"""A two-node Ray cluster on this one machine: the head on the host end of a veth pair, a second node
in its own network namespace, both with token authentication; `dyntrain tune --address` runs a
search whose trials land on both nodes (the data reaches the second node through the object store)."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

CLUSTER_FILES = [Path(__file__).parents[1] / "tune_scripts" / "cluster" / name for name in ("aws-gpu.yaml", "local.yaml")]
needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2 for a network namespace")

RAY = str(Path(sys.executable).with_name("ray"))
SUBNET = "10.213.77"  # private, used only between the two ends of our veth pair
HEAD_IP, NODE_IP = f"{SUBNET}.1", f"{SUBNET}.2"


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HEAD_IP, 0))
        return s.getsockname()[1]


def alive_nodes(address: str, env: dict) -> int:
    out = subprocess.run([RAY, "status", "--address", address], env=env, capture_output=True, text=True).stdout
    active = out.split("Active:")[1].split("Pending:")[0] if "Active:" in out else ""
    return len(re.findall(r"node_[0-9a-f]+", active))


def stop(proc: subprocess.Popen) -> None:
    """`ray start --block` takes its node's processes down with it on SIGTERM."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def two_nodes(tmp_path):
    if SUBNET in subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout:
        pytest.skip(f"{SUBNET}.0/24 is already in use on this machine")
    tag = f"{os.getpid() % 100000}"
    ns, host_end, ns_end = f"dyntrain{tag}", f"dth{tag}", f"dtn{tag}"
    token = tmp_path / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    temp_dir = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", ns)
        sh("ip", "addr", "add", f"{HEAD_IP}/24", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        for cmd in (["addr", "add", f"{NODE_IP}/24", "dev", ns_end], ["link", "set", ns_end, "up"], ["link", "set", "lo", "up"]):
            sh("ip", "netns", "exec", ns, "ip", *cmd)

        port = free_port()
        address = f"{HEAD_IP}:{port}"
        ports = {"--ray-client-server-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--metrics-export-port": free_port()}
        head_log = open(tmp_path / "head.log", "w")
        logs.append(head_log)
        procs.append(subprocess.Popen(
            [RAY, "start", "--head", "--block", "--node-ip-address", HEAD_IP, "--port", str(port), "--num-cpus", "1",
             "--num-gpus", "0", "--include-dashboard", "false", "--temp-dir", temp_dir,
             *[str(x) for kv in ports.items() for x in kv]],
            env=env, stdout=head_log, stderr=subprocess.STDOUT,
        ))
        node_log = open(tmp_path / "node.log", "w")
        logs.append(node_log)
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", ns, RAY, "start", "--block", "--address", address, "--node-ip-address", NODE_IP,
             "--num-cpus", "1", "--num-gpus", "0", "--resources", json.dumps({"second_node": 1})],
            env=env, stdout=node_log, stderr=subprocess.STDOUT,
        ))
        deadline = time.monotonic() + 90
        while alive_nodes(address, env) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("the two-node cluster did not come up:\n" + "\n".join(
                    (tmp_path / f).read_text()[-3000:] for f in ("head.log", "node.log")))
            time.sleep(1)
        yield address, env
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
        # Anything of ours still alive in the namespace (by pid), then the namespace and its veth pair.
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_pass_ray_up_validation(path):
    """What `ray up` checks before it launches anything; plus token auth and a loopback-only dashboard."""
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    head, worker = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address" in worker
    assert any("pip install" in c and "~/dyntrain" in c for c in config["setup_commands"])


@pytest.mark.slow
@pytest.mark.cluster
@needs_netns
def test_search_uses_both_nodes(two_nodes, tmp_path, tiny_folder):
    address, env = two_nodes
    space = tmp_path / "space.yaml"
    space.write_text("policy: [dynamic, random]\nalpha: 50\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dyntrain.cli", "tune", "--address", address, "--space", str(space),
         "--storage", str(tmp_path / "results"), "--name", "two-nodes", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
         "--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "data"),
         "--val-size", "20", "--test-limit", "20", "--batch-size", "64", "--epochs", "2"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from ray import tune

    from dyntrain.tune import trainable

    results = tune.Tuner.restore(str(tmp_path / "results" / "two-nodes"), trainable=trainable).get_results()
    frame = results.get_dataframe()
    assert len(frame) == 2 and not results.errors
    assert set(frame["node_ip"]) == {HEAD_IP, NODE_IP}
    assert all(r.metrics_dataframe["epoch"].tolist() == [1, 2] for r in results)
