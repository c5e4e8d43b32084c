"""Machines of our own on this one, for the cluster tests: a `Host` is a network namespace (its own
addresses and loopback, nothing routed anywhere else), a PID namespace (its `ray stop` sees only its
own processes; killing its PID 1 powers the whole machine off), a UTS namespace (its own hostname)
and a mount namespace in which /root and /tmp are private folders (its own ~/.bashrc, ~/.ray,
/tmp/ray and Ray's `ray_current_cluster` file: nothing a colleague's `ray.init()` could find). The
repository, the virtual environment and the folders a test shares (`keep`) stay visible at their
own paths, like an NFS mount on a real cluster. A `Lab` joins hosts on one private /24 through
a bridge that lives in a namespace of its own: the test machine's own network is never touched.

Run as `python cluster_hosts.py init SPEC.json`, this file is the PID 1 of a host: it sets the host
up, then either execs the host's daemon (sshd) or reaps orphans until it is killed.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtual environment's bin: python, ray, dyntrain
RAY = str(BIN / "ray")
_counter = itertools.count()
PREFIX = "dt"  # namespaces are dt<pid of the test process>-<n>: a crashed run's are found and removed


def remove_stale_namespaces() -> list[str]:
    """Network namespaces a killed test run left (its pid is gone): their processes, then them."""
    removed = []
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        match = re.fullmatch(rf"{PREFIX}(\d+)-s?\d+", name)
        if not match or Path(f"/proc/{match[1]}").exists():
            continue
        delete_netns(name)
        removed.append(name)
    return removed


def delete_netns(name: str) -> None:
    """SIGKILL every process in network namespace `name`, then delete the namespace."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


def require(*tools: str) -> None:
    """Skip the test (fail it in CI, where CI=true) unless we are root and every tool is installed."""
    import pytest

    missing = [t for t in tools if not (shutil.which(t) or Path(t).is_file())]
    problem = "needs root" if os.geteuid() != 0 else f"needs {', '.join(missing)}" if missing else None
    if problem:
        message = f"CLUSTER TEST NOT RUN: {problem} (namespaces, sshd; .ci/run installs iproute2, openssh-server, rsync)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    remove_stale_namespaces()


def sh(*cmd: str, timeout: float = 30) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc.stdout


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Host:
    """One machine. `run`/`popen` execute a command inside it (all its namespaces, cwd `cwd`)."""

    def __init__(self, name: str, workdir: Path, keep: list[Path], hosts: dict[str, str] | None = None,
                 exec_argv: list[str] | None = None):
        self.name = name
        self.tag = f"{PREFIX}{os.getpid()}-{next(_counter)}"  # unique on this machine, short for interface names
        self.netns = self.tag
        self.root = workdir / name
        self.home, self.tmp = self.root / "home", self.root / "tmp"
        for d in (self.home, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700)
        self.tmp.chmod(0o1777)
        self.ip: str | None = None
        self._hosts = {"localhost": "127.0.0.1", **(hosts or {})}
        # The repository, the virtual environment and the Python it was made from (pyenv keeps it in /root).
        always = [REPO, Path(sys.prefix), Path(sys.base_prefix)]
        self._keep = sorted({str(Path(p).resolve()) for p in [*always, *keep]})
        self._exec = exec_argv
        self._proc: subprocess.Popen | None = None
        self.pid1: int | None = None
        self.log = self.root / "init.log"
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")

    def start(self, timeout: float = 20) -> Host:
        hosts_file = self.root / "hosts"
        hosts_file.write_text("".join(f"{ip} {name}\n" for name, ip in self._hosts.items()))
        spec = self.root / "spec.json"
        ready = self.root / "ready"
        spec.write_text(json.dumps({
            "hostname": self.name, "hosts": str(hosts_file), "ready": str(ready), "exec": self._exec,
            "overlays": [["/root", str(self.home)], ["/tmp", str(self.tmp)]], "keep": self._keep,
        }))
        with open(self.log, "w") as log:
            self._proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "unshare", "--mount", "--uts", "--pid", "--fork", "--kill-child",
                 "--mount-proc", "--propagation", "private", sys.executable, __file__, "init", str(spec)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not ready.exists() or not _children(self._proc.pid):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        self.pid1 = _children(self._proc.pid)[0]
        return self

    def argv(self, cmd: list[str], cwd: str | Path = REPO) -> list[str]:
        return ["nsenter", "--target", str(self.pid1), "--net", "--mount", "--uts", "--pid", f"--wd={cwd}", "--", *cmd]

    def run(self, cmd: list[str], env: dict | None = None, timeout: float = 120, check: bool = True,
            cwd: str | Path = REPO) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.argv(cmd, cwd), env=env, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode:
            raise AssertionError(f"[{self.name}] {' '.join(cmd)} exited {proc.returncode}:\n"
                                 f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
        return proc

    def popen(self, cmd: list[str], log: Path, env: dict | None = None, cwd: str | Path = REPO) -> subprocess.Popen:
        with open(log, "w") as out:
            return subprocess.Popen(self.argv(cmd, cwd), env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)

    def ray_logs(self) -> Path | None:
        """This host's latest Ray session's logs folder, seen from outside (session_latest is a link
        to a path in the host's own /tmp)."""
        latest = self.tmp / "ray" / "session_latest"
        if not latest.is_symlink():
            return None
        return self.tmp / "ray" / Path(os.readlink(latest)).name / "logs"

    def pids(self) -> list[int]:
        """Every process of this machine (host PIDs)."""
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill_all_but_init(self) -> list[str]:
        """SIGKILL every process of this machine except its PID 1; returns what it killed (names)."""
        def pid_ns(pid: int) -> str | None:
            try:
                return os.readlink(f"/proc/{pid}/ns/pid")
            except OSError:
                return None

        ours = pid_ns(self.pid1)
        found = []
        for pid in self.pids():
            if pid != self.pid1 and pid_ns(pid) == ours:
                try:
                    found.append(Path(f"/proc/{pid}/comm").read_text().strip())
                    os.kill(pid, signal.SIGKILL)
                except (OSError, ProcessLookupError):
                    pass
        return found

    def power_off(self) -> None:
        """SIGKILL to PID 1: the kernel kills every process of the machine at once, as a power cut would."""
        if self.pid1 is not None:
            try:
                os.kill(self.pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._proc is not None:
            try:
                self._proc.wait(20)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def destroy(self) -> None:
        self.power_off()
        for pid in self.pids():  # anything that entered the namespace by other means
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True, timeout=30)


class Lab:
    """Hosts on SUBNET.0/24 (SUBNET.1, .2, ...) joined by a bridge in a namespace of their own."""

    def __init__(self, workdir: Path, subnet: str, keep: list[Path]):
        self.workdir, self.subnet, self.keep = workdir, subnet, keep
        self.hosts: list[Host] = []
        self.switch = f"{PREFIX}{os.getpid()}-s{next(_counter)}"
        sh("ip", "netns", "add", self.switch)
        try:
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
        except Exception:
            self.destroy()
            raise

    def add(self, names: list[str], prepare=None, exec_argv=None) -> list[Host]:
        """Create, wire and start hosts `names` (addresses in order). prepare(host), if given, runs
        before a host starts (to write its files); exec_argv(host), if given, is its daemon."""
        first = len(self.hosts) + 1
        table = {name: f"{self.subnet}.{first + i}" for i, name in enumerate(names)}
        table.update({h.name: h.ip for h in self.hosts})
        new = []
        for name in names:
            host = Host(name, self.workdir, self.keep, table)
            self.hosts.append(host)  # destroy() removes it, whatever happens next
            host.ip = table[name]
            outer, inner = f"{host.tag}o", f"{host.tag}i"
            sh("ip", "-n", self.switch, "link", "add", outer, "type", "veth", "peer", "name", inner, "netns", host.netns)
            sh("ip", "-n", self.switch, "link", "set", outer, "master", "br0")
            sh("ip", "-n", self.switch, "link", "set", outer, "up")
            sh("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", inner)
            sh("ip", "-n", host.netns, "link", "set", inner, "up")
            new.append(host)
        for host in new:
            if prepare:
                prepare(host)
            if exec_argv:
                host._exec = exec_argv(host)
            host.start()
        return new

    def destroy(self) -> None:
        for host in reversed(self.hosts):
            host.destroy()
        subprocess.run(["ip", "netns", "del", self.switch], capture_output=True, timeout=30)


def private_root(tmp_path: Path) -> Path:
    """Where hosts keep their private /root and /tmp (left for pytest to clean, and to read after a
    failure); outside every folder the hosts keep visible."""
    root = tmp_path / "hosts"
    root.mkdir()
    return root


def wait_for_port(host: Host, ip: str, port: int, timeout: float = 20) -> None:
    code = (f"import socket,time,sys\nend=time.time()+{timeout}\n"
            f"while True:\n try: socket.create_connection(('{ip}',{port}),1).close(); break\n"
            f" except OSError:\n  time.sleep(0.1)\n  if time.time()>end: sys.exit(1)\n")
    host.run([sys.executable, "-c", code], timeout=timeout + 10)


# --- PID 1 of a host -------------------------------------------------------------------------------
def _init(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    ready = open(spec["ready"], "w")  # opened now: /tmp (where it is) is covered below
    socket.sethostname(spec["hostname"])

    def mount(*args: str) -> None:
        subprocess.run(["mount", *args], check=True)

    mount("--bind", spec["hosts"], "/etc/hosts")
    for target, private in spec["overlays"]:
        # What must stay visible under `target` is bound into the private folder first, at the same
        # relative path, and the private folder (with those mounts: --rbind) then covers `target`.
        for keep in spec["keep"]:
            if keep == target or keep.startswith(target.rstrip("/") + "/"):
                inside = Path(private) / os.path.relpath(keep, target)
                inside.mkdir(parents=True, exist_ok=True)
                mount("--rbind", keep, str(inside))
        mount("--rbind", private, target)
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory (Debian's own, empty)
    ready.write("ok")
    ready.close()
    sys.stdout.flush()
    if spec["exec"]:
        os.execv(spec["exec"][0], spec["exec"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:  # PID 1 adopts every orphan (Ray's daemons): reap them
        try:
            os.wait()
        except ChildProcessError:
            time.sleep(0.2)


if __name__ == "__main__" and sys.argv[1:2] == ["init"]:
    _init(sys.argv[2])
