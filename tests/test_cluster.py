"""Clusters on this one machine (marked `cluster`; root and iproute2 needed, a skip outside CI and a
failure in CI without them). Every "host" is a set of Linux namespaces (tests/cluster_hosts.py):
traffic stays on their own loopbacks and on private /24s between their veths, and nothing of ours is
visible to another Ray on this machine (own /tmp, own PIDs).

- the cluster files pass `ray up`'s own validation, and hold no placeholder or known trap;
- a head on a veth and a node in a namespace, token authentication: trials land on both nodes;
- `ray up` end to end with local.yaml, as README.md says: sshd hosts, ray up, ray exec ray status,
  ray dashboard, ray job submit of `dyntrain tune`, ray down;
- Ray's fake multi-node provider as an autoscaling GPU cluster: workers start from zero, two trials
  share each GPU (--gpus-per-trial 0.5), idle workers go, `dyntrain report` shows the placement;
- a node lost mid-trial (a power cut of its host): the trial ends on the other node from its
  checkpoint, epoch by epoch equal to an uninterrupted twin;
- a driver killed with SIGKILL: `dyntrain tune --resume` finishes without rerunning finished trials.
"""

from __future__ import annotations

import functools
import json
import math
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
import yaml
from cluster_hosts import BIN, Host, Lab, delete_netns, private_root, require, sh, wait_for_port

CLUSTER_DIR = Path(__file__).parents[1] / "tune_scripts" / "cluster"
CLUSTER_FILES = [CLUSTER_DIR / name for name in ("aws-gpu.yaml", "local.yaml")]
LOCAL_YAML = CLUSTER_DIR / "local.yaml"

RAY = str(Path(sys.executable).with_name("ray"))
SUBNET = "10.213.77"  # private, used only between the two ends of our veth pair
HEAD_IP, NODE_IP = f"{SUBNET}.1", f"{SUBNET}.2"


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
    require("ip")
    if SUBNET in subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout:
        message = f"CLUSTER TEST NOT RUN: {SUBNET}.0/24, which the test gives its two nodes, is already in use here"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
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
        delete_netns(ns)  # anything of ours still alive in the namespace, then the namespace
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_files_pass_ray_up_validation(path):
    """What `ray up` checks before it launches anything (Ray's schema, its defaults filled in); plus
    token auth, a loopback-only dashboard, dyntrain installed from the checkout, no placeholder."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    text = path.read_text()
    config = yaml.safe_load(text)
    validate_config(prepare_config(config))
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token" and config["file_mounts"]["~/dyntrain"] == "."
    head, worker = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert re.search(r"RAY_AUTH_MODE=token (\S+=\S+ )*ray start --head", head) and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token ray start --address" in worker
    assert any("pip install" in c and "-e ~/dyntrain" in c for c in config["setup_commands"])
    assert not re.search(r"ACCOUNT_ID|BUCKET|arn:aws", text.split("\ncluster_name:")[1])  # nothing to fill in below the header


def test_aws_cluster_file_needs_no_placeholder_no_passrole_trap_and_no_torch_download():
    """One image for every node (one Python: Ray needs it), a current GPU image with CUDA torch in it
    (not Ray's default AMI), the same instance profile by name on the head and the workers (the head
    passes its own role: no account id to fill in), and setup that installs Ray and dyntrain only."""
    config = yaml.safe_load((CLUSTER_DIR / "aws-gpu.yaml").read_text())
    nodes = {name: t["node_config"] for name, t in config["available_node_types"].items()}
    images = {n["ImageId"] for n in nodes.values()}
    assert len(images) == 1 and "pytorch" in next(iter(images)) and "docker" not in config
    assert {json.dumps(n["IamInstanceProfile"], sort_keys=True) for n in nodes.values()} == {'{"Name": "dyntrain-ray"}'}
    setup = " ".join(config["setup_commands"])
    assert "torch" not in setup.replace("/opt/pytorch", "") and "/opt/pytorch/bin/activate" in setup
    from importlib.metadata import version

    assert f"ray[default,tune]=={version('ray')}" in setup  # the nodes' Ray is the one `ray up` runs with


def test_local_cluster_file_starts_the_v1_autoscaler():
    """`ray up` turns on Ray's v2 autoscaler, which does not support the local provider (ray#57153):
    the head would never start the workers. local.yaml turns it off in the head's start command."""
    config = yaml.safe_load(LOCAL_YAML.read_text())
    assert "RAY_enable_autoscaler_v2=0 ray start --head" in " ".join(config["head_start_ray_commands"])


def test_aws_extra_brings_boto3():
    """`ray up` on AWS imports boto3: `pip install -e '.[aws]'` installs it."""
    import tomllib

    extras = tomllib.loads((CLUSTER_DIR.parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("boto3") for req in extras.get("aws", [])), extras


@pytest.mark.slow
@pytest.mark.cluster
def test_search_uses_both_nodes(two_nodes, tmp_path, tiny_folder):
    address, env = two_nodes
    space = tmp_path / "space.yaml"
    space.write_text("policy: [dynamic, random]\nalpha: 50\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dyntrain.cli", "tune", "--address", address, "--space", str(space),
         "--storage", str(tmp_path / "results"), "--name", "two-nodes", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
         "--dataset", f"folder:{tiny_folder}", "--data-dir", str(tmp_path / "data"),
         "--val-size", "20", "--test-limit", "20", "--batch-size", "64", "--epochs", "2", "--no-reuse-actors"],
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


# --- `ray up` with the on-prem provider, as the README says --------------------------------------
UP_SUBNET = "10.213.78"  # private, inside the lab's own namespaces only
UP_EPOCHS = 3
SSHD_CONFIG = """\
ListenAddress {ip}
HostKey /root/.sshd/host_key
PidFile none
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding local
X11Forwarding no
PrintMotd no
MaxStartups 50
"""


def filled_local_yaml(head_ip: str, worker_ip: str) -> dict:
    """tune_scripts/cluster/local.yaml with the lab's addresses and ssh_user root. Its first two setup
    commands (create ~/dyntrain-venv, pip install the checkout into it) become a link to this
    checkout's .venv: the hosts have no route to a package index, and the hosts share this machine's
    filesystem (their ~ is private, the venv is not). Everything else is the file as users get it."""
    config = yaml.safe_load(LOCAL_YAML.read_text())
    create, install, activate = config["setup_commands"]
    assert "~/dyntrain-venv" in create and "pip install" in install and "~/dyntrain" in install
    assert activate.startswith("grep -q dyntrain-venv ~/.bashrc")
    config["setup_commands"] = [f"ln -sfn {sys.prefix} ~/dyntrain-venv", activate]
    config["provider"].update(head_ip=head_ip, worker_ips=[worker_ip])
    config["auth"]["ssh_user"] = "root"
    return config


def client_env() -> dict:
    """A user's shell on the laptop: this checkout's venv on PATH, HOME the laptop's own /root."""
    keep = ("LANG", "LC_ALL", "TERM")
    return {**{k: os.environ[k] for k in keep if k in os.environ}, "HOME": "/root", "USER": "root",
            "PATH": f"{BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "RAY_USAGE_STATS_ENABLED": "0"}


def results_by_trial(experiment: Path) -> dict[str, list[dict]]:
    """Each trial's reported rows (result.json) under an experiment folder, by trial folder name."""
    rows = {}
    for path in sorted(experiment.glob("*/result.json")):
        rows[path.parent.name] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


@functools.cache
def shared_folder(tmp_path: Path, tiny_folder: Path, space: str) -> Path:
    """The hosts' shared folder with the tiny data and a search space (after checking the hosts can be made)."""
    require("ip", "unshare", "nsenter")
    shared = tmp_path / "shared"
    shutil.copytree(tiny_folder, shared / "cifar10-tiny")
    (shared / "space.yaml").write_text(space)
    return shared


def tune_options(*extra: str) -> list[str]:
    """`dyntrain tune` options every cluster test uses: tiny, fast trials; no live report page; and
    --no-reuse-actors, so that each trial runs where Ray placed its resources (a reused process
    would put a pending trial on whichever node finished first, a matter of timing)."""
    return [*extra, "--val-size", "20", "--test-limit", "20", "--batch-size", "32", "--batchnorm", "--live-report-s", "0",
            "--no-reuse-actors"]


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(900)
def test_ray_up_local_cluster_runs_a_search_on_both_hosts(tmp_path, tiny_folder):
    """The README's steps for local.yaml, from a "laptop" host onto a head and a worker host that each
    run sshd: ray get-auth-token, ray up, ray exec ray status, ray dashboard, ray job submit of a
    `dyntrain tune` search, ray down. What differs from a user's run: the addresses and ssh_user root
    filled in, the venv linked rather than installed (filled_local_yaml), a 2-trial search on tiny
    data with --storage and --dataset in a folder every host mounts. One trial fills a node
    (--cpus-per-trial = the node's CPUs), so the two trials run at once only if both hosts serve."""
    require("ip", "unshare", "nsenter", "/usr/sbin/sshd", "ssh", "ssh-keygen", "rsync")
    from ray._private.utils import get_num_cpus

    shared = tmp_path / "shared"  # what an NFS mount is on a real cluster: the same path on every host
    shutil.copytree(tiny_folder, shared / "cifar10-tiny")
    (shared / "space.yaml").write_text("policy: [dynamic, random]\nalpha: 50\n")
    lab = Lab(private_root(tmp_path), UP_SUBNET, keep=[shared])
    timings = {}
    try:
        (laptop,) = lab.add(["dt-laptop"])
        key = laptop.home / ".ssh" / "id_ed25519"
        key.parent.mkdir(mode=0o700)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "dyntrain-test", "-f", str(key))

        def prepare(host: Host) -> None:  # sshd on the host's address only, the laptop's key let in
            (host.home / ".ssh").mkdir(mode=0o700)
            (host.home / ".ssh" / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
            (host.home / ".sshd").mkdir(mode=0o700)
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host.home / ".sshd" / "host_key"))
            (host.home / ".sshd" / "config").write_text(SSHD_CONFIG.format(ip=host.ip))

        head, worker = lab.add(["dt-head", "dt-worker"], prepare,
                               lambda host: ["/usr/sbin/sshd", "-D", "-e", "-f", "/root/.sshd/config"])
        for host in (head, worker):
            wait_for_port(laptop, host.ip, 22)
        cluster = shared / "local.yaml"
        cluster.write_text(yaml.safe_dump(filled_local_yaml(head.ip, worker.ip), sort_keys=False))
        env = client_env()
        laptop.run([RAY, "get-auth-token", "--generate"], env)

        start = time.monotonic()
        laptop.run([RAY, "up", "-y", str(cluster)], env, timeout=360)
        timings["ray up"] = time.monotonic() - start
        deadline = time.monotonic() + 240
        while True:  # the head's autoscaler starts the worker (over SSH) after `ray up` returns
            status = laptop.run([RAY, "exec", str(cluster), "RAY_AUTH_MODE=token ray status"], env, timeout=120,
                                check=False).stdout
            active = status.split("Active:")[-1].split("Pending:")[0] if "Active:" in status else ""
            if "2 local.cluster.node" in active:
                break
            assert time.monotonic() < deadline, f"the worker did not join:\n{status[-3000:]}\n" + lab_logs(head)
            time.sleep(2)
        timings["worker joined"] = time.monotonic() - start

        laptop.popen([RAY, "dashboard", str(cluster)], tmp_path / "dashboard.log", env)  # ends with the laptop
        wait_for_port(laptop, "127.0.0.1", 8265, timeout=60)
        cpus = str(get_num_cpus())
        job = laptop.run(
            [RAY, "job", "submit", "--address", "http://127.0.0.1:8265", "--working-dir", ".", "--",
             "python", "-m", "dyntrain.cli", "tune", "--address", "auto", "--space", str(shared / "space.yaml"),
             "--storage", str(shared / "results"), "--name", "ray-up", "--cpus-per-trial", cpus,
             "--gpus-per-trial", "0", "--dataset", f"folder:{shared / 'cifar10-tiny'}",
             "--data-dir", str(shared / "cache"), "--epochs", str(UP_EPOCHS), *tune_options()],
            {**env, "RAY_AUTH_MODE": "token"}, timeout=420, check=False)
        timings["job"] = time.monotonic() - start
        (tmp_path / "job.log").write_text(job.stdout + job.stderr)
        assert job.returncode == 0 and "succeeded" in job.stdout, job.stdout[-5000:] + job.stderr[-3000:] + lab_logs(head)

        rows = results_by_trial(shared / "results" / "ray-up")
        assert len(rows) == 2
        assert {r[-1]["node_ip"] for r in rows.values()} == {head.ip, worker.ip}
        assert all([row["epoch"] for row in r] == list(range(1, UP_EPOCHS + 1)) for r in rows.values())
        assert all(list(Path(shared / "results" / "ray-up", trial).glob("checkpoint_*")) for trial in rows)

        laptop.run([RAY, "down", "-y", str(cluster)], env, timeout=180)
        timings["ray down"] = time.monotonic() - start
        left = [p for p in head.pids() if "raylet" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
        assert not left, "ray down left the head's raylet running"
    finally:
        print("timings (s from ray up):", {k: round(v) for k, v in timings.items()})
        lab.destroy()


def lab_logs(*hosts: Host) -> str:
    """The last lines of each host's Ray logs that tell why a node or a trial failed."""
    out = []
    for host in hosts:
        logs = host.ray_logs()
        for pattern in ("monitor.log", "raylet.out", "job-driver-*.log") if logs else ():
            for path in sorted(logs.glob(pattern))[-2:]:
                out.append(f"--- {host.name}:{path.name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(out)


def ray_env(**extra: str) -> dict:
    """The environment of a Ray node or driver inside a host."""
    return {**client_env(), "PYTHONUNBUFFERED": "1", **extra}


def node_types(status: str) -> dict[str, int]:
    """`ray status`'s healthy nodes by type, e.g. {"ray.head.default": 1, "gpu": 1}."""
    section = status.split("Node status")[-1].split("Pending:")[0]
    counts: dict[str, int] = {}
    for line in section.splitlines():
        match = re.fullmatch(r"\s*(\d+) (\S+)\s*", line)
        if match:
            counts[match[2]] = counts.get(match[2], 0) + int(match[1])
    return counts


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    """probe() until it returns something true; fail with `what` and its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"{what} (after {timeout:.0f} s); last: {value!r}")
        time.sleep(every)


# --- a simulated GPU cluster that autoscales: Ray's fake multi-node provider -----------------------
def fake_gpu_cluster(max_gpu_workers: int = 2) -> dict:
    """Ray's "Testing Autoscaling Locally" config (fake_multi_node/example.yaml, which the wheel lacks):
    a CPU-only head and a worker type that advertises 2 GPUs, 0..max workers, idle ones let go after
    6 s. Workers are Ray nodes the head's autoscaler starts on this machine."""
    return {
        "cluster_name": "fake-gpu", "max_workers": max_gpu_workers, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 2, "GPU": 2, "object_store_memory": 300_000_000}, "node_config": {},
                    "min_workers": 0, "max_workers": max_gpu_workers},
        },
        "head_node_type": "ray.head.default", "auth": {}, "docker": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                           "head_start_ray_commands", "worker_start_ray_commands")},
    }


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_autoscaling_gpu_cluster_starts_workers_packs_two_trials_per_gpu_and_lets_them_go(tmp_path, tiny_folder):
    """`dyntrain tune --gpus-per-trial 0.5` on a cluster of a CPU head and no worker: the autoscaler
    starts a 2-GPU worker for the 4 pending trials, Ray gives each trial half a GPU (two per GPU, at
    once), each trial records its node, GPU ids and share, `dyntrain report` lists them, and the idle
    worker is let go after the search. The GPUs are advertised, not real: trials train on the CPU."""
    require("ip", "unshare", "nsenter")
    shared = tmp_path / "shared"
    shutil.copytree(tiny_folder, shared / "cifar10-tiny")
    (shared / "space.yaml").write_text("policy: [dynamic, random]\nalpha: 50\nseed: [0, 1]\n")
    (shared / "fake-gpu.yaml").write_text(yaml.safe_dump(fake_gpu_cluster()))
    host = Host("dt-fake", private_root(tmp_path), keep=[shared])  # its own loopback: port 6379 is ours
    env = ray_env(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    address = "127.0.0.1:6379"  # the fake provider's workers join the head at <node ip>:6379

    def head_alone() -> bool:
        return node_types(host.run([RAY, "status", "--address", address], env, timeout=60, check=False).stdout) == {
            "ray.head.default": 1}

    try:
        host.start()
        host.popen([RAY, "start", "--head", "--block", "--port", "6379", "--num-cpus", "1", "--num-gpus", "0",
                    "--object-store-memory", "300000000", "--include-dashboard", "false",
                    "--autoscaling-config", str(shared / "fake-gpu.yaml")], tmp_path / "head.log", env)
        wait_for("the head came up, without workers", head_alone, 90)
        start = time.monotonic()
        search = host.run(
            [sys.executable, "-m", "dyntrain.cli", "tune", "--address", address, "--space", str(shared / "space.yaml"),
             "--storage", str(shared / "results"), "--name", "fractional", "--gpus-per-trial", "0.5",
             "--cpus-per-trial", "0.5", "--dataset", f"folder:{shared / 'cifar10-tiny'}",
             "--data-dir", str(shared / "cache"), "--epochs", "2", *tune_options()],
            env, timeout=420, check=False)
        searched = time.monotonic() - start
        assert search.returncode == 0, search.stdout[-4000:] + search.stderr[-4000:] + lab_logs(host)
        wait_for("the idle GPU worker was let go", head_alone, 120)
        print(f"search {searched:.0f} s, workers gone {time.monotonic() - start - searched:.0f} s later")
    finally:
        host.destroy()

    rows = results_by_trial(shared / "results" / "fractional")
    assert len(rows) == 4 and all([r["epoch"] for r in trial] == [1, 2] for trial in rows.values())
    last = [trial[-1] for trial in rows.values()]
    head_log = (host.ray_logs() / "monitor.log").read_text(errors="replace")
    assert re.search(r"Adding 1 node(\(s\)|s)? of type gpu", head_log), head_log[-3000:]
    assert re.search(r"Removing 1 nodes of type gpu \(idle\)", head_log), head_log[-3000:]
    assert all(r["gpus"] == 0.5 and re.fullmatch(r"[01]", r["gpu_ids"]) for r in last), last
    per_gpu: dict[tuple, list] = {}
    for trial in rows.values():
        per_gpu.setdefault((trial[-1]["node_id"], trial[-1]["gpu_ids"]), []).append(trial)
    assert sorted(len(v) for v in per_gpu.values()) == [2, 2], {k: len(v) for k, v in per_gpu.items()}
    for pair in per_gpu.values():  # the two trials of a GPU ran at the same time
        spans = [(t[0]["timestamp"] - t[0]["time_this_iter_s"], t[-1]["timestamp"]) for t in pair]
        assert max(s for s, _ in spans) <= min(e for _, e in spans) + 1, spans
    nodes = {r["node_id"] for r in last}
    assert len(nodes) == 1 and not next(iter(nodes)).endswith("00000")  # a worker the autoscaler started, not the head

    out = tmp_path / "report"
    figures = ["--no-figures"] if "--no-figures" in subprocess.run(
        [sys.executable, "-m", "dyntrain.cli", "report", "--help"], capture_output=True, text=True, timeout=120).stdout else []
    subprocess.run([sys.executable, "-m", "dyntrain.cli", "report", str(shared / "results" / "fractional"), "--out", str(out),
                    "--format", "csv", *figures], check=True, capture_output=True, timeout=300)
    import pandas as pd

    runs = pd.read_csv(out / "runs.csv", dtype={"gpu_ids": str})
    assert {"node_ip", "node_id", "gpu_ids", "gpus"} <= set(runs.columns), list(runs.columns)
    assert sorted(zip(runs["node_id"], runs["gpu_ids"], runs["gpus"])) == sorted(
        (r["node_id"], r["gpu_ids"], r["gpus"]) for r in last)


# --- a lost node, a killed driver --------------------------------------------------------------------
LOSS_SUBNET = "10.213.79"
LOSS_EPOCHS = 6
# What a run computes, epoch by epoch (not its wall times, nor where it ran).
COMPARED = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "best_val_acc", "test_acc_at_best_val",
            "subset_size", "images_seen", "resample", "beta_n", "n_train")


def by_epoch(rows: list[dict]) -> dict[int, dict]:
    """The last row reported for each epoch, restricted to COMPARED."""
    return {r["epoch"]: {k: r.get(k) for k in COMPARED} for r in rows}


def differences(expected: dict[int, dict], got: dict[int, dict]) -> list[str]:
    """Per epoch and metric, what differs: numbers beyond a relative 1e-6, anything else at all."""
    out = []
    for epoch, metrics in expected.items():
        for key, want in metrics.items():
            have = got.get(epoch, {}).get(key)
            numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (want, have))
            if not (math.isclose(want, have, rel_tol=1e-6, abs_tol=1e-9) if numbers else want == have):
                out.append(f"epoch {epoch} {key}: {have!r} != {want!r}")
    return out


def complete_results(experiment: Path, trials: list[str], last_epoch: int) -> dict[str, bytes] | None:
    """Each trial's result.json, once every one ends with the complete row of `last_epoch`; else None."""
    files = {name: (experiment / name / "result.json") for name in trials}
    if not all(f.exists() for f in files.values()):
        return None
    kept = {name: f.read_bytes() for name, f in files.items()}
    for data in kept.values():
        if not data.endswith(b"\n") or json.loads(data.splitlines()[-1])["epoch"] != last_epoch:
            return None
    return kept


def saved_trials(experiment: Path) -> dict[str, str]:
    """Trial folder -> status in the newest experiment state the driver saved ({} before the first)."""
    states = sorted(experiment.glob("experiment_state-*.json"))
    try:
        data = json.loads(states[-1].read_text())
    except (IndexError, json.JSONDecodeError, OSError):  # none yet, or caught mid-write
        return {}
    trials = [json.loads(t[0]) for t in data["trial_data"]]
    return {t["relative_logdir"]: t["status"] for t in trials}


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_node_loss_trial_restarts_on_surviving_node_from_checkpoint_with_same_metrics(tmp_path, tiny_folder):
    """Two identical trials (--num-samples 2, one seed), one per node of a head + worker cluster in
    network namespaces. Once the worker's trial has checkpointed (--checkpoint-every 1) and is still
    training, every process of the worker host gets SIGKILL at once (a power cut). With
    --max-failures 1 the trial restarts on the head from its last checkpoint, and its epochs end
    equal, metric by metric, to the uninterrupted twin's."""
    shared = shared_folder(tmp_path, tiny_folder, "policy: dynamic\nalpha: 50\n")
    token = shared / "auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = ray_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1")
    lab = Lab(private_root(tmp_path), LOSS_SUBNET, keep=[shared])
    experiment = shared / "results" / "node-loss"
    try:
        head, worker = lab.add(["dt-head", "dt-worker"])
        address = f"{head.ip}:6379"
        head.popen([RAY, "start", "--head", "--block", "--node-ip-address", head.ip, "--port", "6379", "--num-cpus", "1",
                    "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats"], tmp_path / "head.log", env)
        wait_for("the head came up", lambda: head.run([RAY, "status", "--address", address], env, check=False,
                                                      timeout=60).returncode == 0, 90)
        worker.popen([RAY, "start", "--block", "--address", address, "--node-ip-address", worker.ip, "--num-cpus", "1",
                      "--num-gpus", "0", "--disable-usage-stats"], tmp_path / "worker.log", env)
        wait_for("the worker joined", lambda: sum(node_types(head.run(
            [RAY, "status", "--address", address], env, check=False, timeout=60).stdout).values()) == 2, 90)

        driver = head.popen(
            [sys.executable, "-m", "dyntrain.cli", "tune", "--address", address, "--space", str(shared / "space.yaml"),
             "--num-samples", "2", "--max-failures", "1", "--checkpoint-every", "1", "--storage", str(shared / "results"),
             "--name", "node-loss", "--cpus-per-trial", "1", "--gpus-per-trial", "0",
             "--dataset", f"folder:{shared / 'cifar10-tiny'}", "--data-dir", str(shared / "cache"),
             "--epochs", str(LOSS_EPOCHS), *tune_options()], tmp_path / "driver.log", env)

        def victim():  # the worker's trial, once it has a checkpoint and epochs to go
            assert driver.poll() is None, "the search ended before the worker's trial checkpointed:\n" + (
                tmp_path / "driver.log").read_text()[-4000:]
            for name, rows in results_by_trial(experiment).items():
                if rows and rows[-1]["node_ip"] == worker.ip and 1 <= rows[-1]["epoch"] < LOSS_EPOCHS - 1 \
                        and list((experiment / name).glob("checkpoint_*")):
                    return name
            return None

        name = wait_for("a trial ran on the worker and checkpointed", victim, 240, every=0.2)
        worker.power_off()
        killed_at = time.monotonic()
        driver.wait(timeout=300)
        recovered = time.monotonic() - killed_at
        log = (tmp_path / "driver.log").read_text()
        assert driver.returncode == 0, log[-5000:]
    finally:
        lab.destroy()

    rows = results_by_trial(experiment)
    assert len(rows) == 2 and name in rows
    (twin,) = [r for n, r in rows.items() if n != name]
    lost = rows[name]
    before = [r for r in lost if r["node_ip"] == worker.ip]
    after = lost[len(before):]
    assert before and after and all(r["node_ip"] == head.ip for r in after), [(r["epoch"], r["node_ip"]) for r in lost]
    # Restarted from its last checkpoint (the last epoch reported before the loss), not from scratch.
    assert after[0]["epoch"] == before[-1]["epoch"] + 1 > 1
    assert [r["epoch"] for r in after][-1] == LOSS_EPOCHS
    assert [r["epoch"] for r in twin] == list(range(1, LOSS_EPOCHS + 1))
    expected, got = by_epoch(twin), by_epoch(lost)
    assert got.keys() == expected.keys()
    assert not differences(expected, got)
    print(f"lost the worker at epoch {before[-1]['epoch']}; the search ended {recovered:.0f} s later")


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_driver_kill_then_resume_finishes_without_redoing_finished_trials(tmp_path, tiny_folder):
    """`dyntrain tune` (its own local Ray) gets SIGKILL once a trial has finished and been saved as
    such, while the next one trains; `dyntrain tune --resume` with the same options finishes the
    search, leaving the finished trial's records as they were."""
    from ray._private.utils import get_num_cpus

    shared = shared_folder(tmp_path, tiny_folder, "policy: [dynamic, random, static]\nalpha: 50\n")
    experiment = shared / "results" / "killed"
    host = Host("dt-laptop", private_root(tmp_path), keep=[shared])
    env = ray_env(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    command = [sys.executable, "-m", "dyntrain.cli", "tune", "--space", str(shared / "space.yaml"),
               "--storage", str(shared / "results"), "--name", "killed", "--cpus-per-trial", str(get_num_cpus()),
               "--gpus-per-trial", "0", "--dataset", f"folder:{shared / 'cifar10-tiny'}", "--data-dir", str(shared / "cache"),
               "--epochs", "4", "--checkpoint-every", "1", *tune_options()]
    try:
        host.start()
        driver = host.popen(command, tmp_path / "driver.log", env)

        def one_done_one_running():
            assert driver.poll() is None, "the search ended first:\n" + (tmp_path / "driver.log").read_text()[-4000:]
            saved = saved_trials(experiment)
            done = [n for n, s in saved.items() if s == "TERMINATED"]
            return done if done and any(s == "RUNNING" for s in saved.values()) else None

        done = wait_for("a trial finished and was saved while another ran", one_done_one_running, 240, every=0.2)
        # The state says TERMINATED before the trial's rows reach its result.json: wait for the last one.
        kept = wait_for("the finished trials' result.json hold their last epoch",
                        lambda: complete_results(experiment, done, last_epoch=4), 60, every=0.2)
        (python,) = [p for p in Path(f"/proc/{driver.pid}/task/{driver.pid}/children").read_text().split()]
        os.kill(int(python), signal.SIGKILL)
        driver.wait(timeout=30)
        left: list[str] = []  # what the killed driver's Ray left behind, killed until a pass finds nothing

        def reaped() -> bool:
            killed = host.kill_all_but_init()
            left.extend(killed)
            return not killed

        wait_for("the killed driver's Ray is gone", reaped, 60, every=0.2)
        print(f"killed the driver after {len(done)} finished trial(s); its Ray left {left or 'nothing'} behind")
        resumed = host.run([*command, "--resume"], env, timeout=420, check=False)
        assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    finally:
        host.destroy()

    assert set(saved_trials(experiment).values()) == {"TERMINATED"} and len(saved_trials(experiment)) == 3
    rows = results_by_trial(experiment)
    for name, before in kept.items():  # not one row more: the finished trial did not run again
        assert (experiment / name / "result.json").read_bytes() == before
    for trial in rows.values():
        assert sorted(by_epoch(trial)) == [1, 2, 3, 4] and trial[-1]["epoch"] == 4
