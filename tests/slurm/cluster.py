"""A real single-node SLURM cluster (munge + slurmctld + slurmd from Debian) under one folder, no systemd.

    python tests/slurm/cluster.py install       # apt-get install the packages if missing (root only)
    python tests/slurm/cluster.py up DIR        # start the daemons; prints the cluster's facts as JSON
    python tests/slurm/cluster.py down DIR      # stop them by pid, remove the /etc/slurm/slurm.conf link

Each setting below was learned from a hang or a failure of an earlier bring-up on a single-node cluster:
- munged runs as root with its socket, key, log, pid and seed files in DIR/munge (socket folder mode 755,
  key root-owned mode 400); slurm finds the socket through AuthInfo.
- The config must also be reachable at /etc/slurm/slurm.conf: the executor plugin's job step clears every
  SLURM_* variable (SLURM_CONF too) before its inner srun. A symlink is made there and removed on `down`;
  a slurm.conf that is not ours is never touched (`up` fails instead).
- No slurmdbd, so no sacct: the profile must use `slurm-status-command: squeue`, and MinJobAge=3600 keeps
  finished jobs visible to squeue, and to the test's scontrol checks after a run of several minutes (with a
  small MinJobAge the plugin falls back to sacct and hangs; with 300 s the first jobs were gone by then).
  jobcomp/filetxt writes one line per finished job to DIR/jobcomp.txt: the proof that jobs ran.
- Two fake GPUs (gres gpu with device files /dev/null and /dev/zero: slurmd counts a GPU without a File as
  none and drains the node) so a rule's `gpu: 1` (sbatch --gpus=1) is scheduled for real, two GPU jobs side
  by side on a 2-core machine as two CPU jobs are (Table 1's DAG has ~25 GPU jobs, most of them ready at once
  after the score model).
- The node declares at least NODE_MEM_MB of memory (SlurmdParameters=config_overrides) so the profile's
  paper-sized memory requests (up to 64 GB) are accepted; the test's jobs use well under 2 GB each. Its CPU
  count is the machine's own.
"""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
BINARIES = ["slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "munged", "munge", "unmunge"]
ETC_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "msma"
NODE_MEM_MB = 131072
GPU_FILES = ["/dev/null", "/dev/zero"]  # stand-ins for /dev/nvidia0, /dev/nvidia1


def missing_binaries():
    return [b for b in BINARIES if not (shutil.which(b) or Path("/usr/sbin", b).exists())]


def install():
    """Install the Debian packages if any binary is missing. Returns None on success, else why not."""
    if not missing_binaries():
        return None
    if os.geteuid() != 0:
        return f"not root, cannot apt-get install {' '.join(PACKAGES)} (missing: {missing_binaries()})"
    if not shutil.which("apt-get"):
        return f"no apt-get to install {' '.join(PACKAGES)} (missing: {missing_binaries()})"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:  # stale package lists: refresh once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0 or missing_binaries():
        return f"apt-get install {' '.join(PACKAGES)} failed (rc {result.returncode}): {result.stderr[-1500:]}"
    return None


def _sbin(name):
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line():
    """`slurmd -C`'s own description of this machine (CPUs, sockets, cores, memory)."""
    out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    line = next(entry for entry in out.splitlines() if entry.startswith("NodeName="))
    fields = dict(item.split("=", 1) for item in line.split())
    fields["RealMemory"] = str(max(int(fields["RealMemory"]), NODE_MEM_MB))
    return fields["NodeName"], " ".join(f"{k}={v}" for k, v in fields.items())


def _wait(predicate, timeout, what, logs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    tails = "".join(f"\n--- {p}:\n{Path(p).read_text(errors='replace')[-2000:]}" for p in logs if Path(p).exists())
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}{tails}")


def _start(cmd, log):
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True).pid


def _alive(pid):
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def write_config(root, hostname, node_line):
    munge_socket = root / "munge" / "munge.socket.2"
    ports = _free_port(), _free_port()
    conf = f"""# Generated by tests/slurm/cluster.py: a one-node test cluster, everything under {root}.
ClusterName=msmatest
SlurmctldHost={hostname}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
MinJobAge=3600
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=1
DefMemPerCPU=1000
GresTypes=gpu
{node_line} NodeAddr=127.0.0.1 Gres=gpu:{len(GPU_FILES)} State=UNKNOWN
PartitionName={PARTITION} Nodes={hostname} Default=YES MaxTime=INFINITE State=UP
"""
    (root / "slurm.conf").write_text(conf)
    (root / "gres.conf").write_text("".join(f"NodeName={hostname} Name=gpu File={device}\n" for device in GPU_FILES))
    return munge_socket


def up(root):
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    why = install()
    if why:
        raise RuntimeError(why)
    if ETC_CONF.is_symlink() and not Path(os.readlink(ETC_CONF)).exists():
        ETC_CONF.unlink()  # a stale link left by a run that was killed
    if ETC_CONF.exists() or ETC_CONF.is_symlink():
        raise RuntimeError(f"{ETC_CONF} exists and is not ours: refusing to replace a real SLURM config")
    for sub in ("munge", "state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    (root / "munge").chmod(0o755)
    root.chmod(0o755)
    hostname, node_line = _node_line()
    munge_socket = write_config(root, hostname, node_line)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(stat.S_IRUSR)

    pids = {}
    state = {"root": str(root), "pids": pids, "partition": PARTITION, "node": hostname,
             "conf": str(root / "slurm.conf"), "jobcomp": str(root / "jobcomp.txt"),
             "munge_socket": str(munge_socket), "etc_link": str(ETC_CONF)}
    (root / "cluster.json").write_text(json.dumps(state, indent=1))
    try:
        subprocess.run([_sbin("munged"), "--force", f"--socket={munge_socket}", f"--key-file={key}",
                        f"--log-file={root}/munge/munged.log", f"--pid-file={root}/munge/munged.pid",
                        f"--seed-file={root}/munge/munged.seed"], check=True, capture_output=True, timeout=30)
        pids["munged"] = int((root / "munge" / "munged.pid").read_text())
        (root / "cluster.json").write_text(json.dumps(state, indent=1))
        check = subprocess.run(f"munge -n -S {munge_socket} | unmunge -S {munge_socket}", shell=True,
                               capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise RuntimeError(f"munge credential check failed: {check.stdout}{check.stderr}")

        ETC_CONF.parent.mkdir(parents=True, exist_ok=True)
        ETC_CONF.symlink_to(root / "slurm.conf")
        env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
        os.environ["SLURM_CONF"] = env["SLURM_CONF"]
        conf = str(root / "slurm.conf")
        pids["slurmctld"] = _start([_sbin("slurmctld"), "-D", "-i", "-f", conf], root / "slurmctld.out")
        (root / "cluster.json").write_text(json.dumps(state, indent=1))
        _wait(lambda: subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env).stdout
              .count("UP") > 0, 30, "slurmctld", [root / "slurmctld.log", root / "slurmctld.out"])
        pids["slurmd"] = _start([_sbin("slurmd"), "-D", "-f", conf, "-N", hostname], root / "slurmd.out")
        (root / "cluster.json").write_text(json.dumps(state, indent=1))

        def idle():
            out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, env=env)
            return out.stdout.strip() in ("idle", "mixed", "allocated")

        _wait(idle, 60, "the node to become idle", [root / "slurmd.log", root / "slurmctld.log"])
        for name, pid in pids.items():
            if not _alive(pid):
                raise RuntimeError(f"{name} (pid {pid}) died")
    except Exception:
        down(root)
        raise
    return state


def down(root):
    """Stop every daemon this cluster started, by pid (TERM, then KILL), and remove the config link."""
    root = Path(root).resolve()
    path = root / "cluster.json"
    if not path.exists():
        return
    state = json.loads(path.read_text())
    env = {**os.environ, "SLURM_CONF": state["conf"]}
    controller = state["pids"].get("slurmctld")
    if controller and _alive(controller):  # end jobs still queued or running (and their slurmstepd) first

        def queued():
            return subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=env,
                                  timeout=30).stdout.split()

        jobs = queued()
        if jobs:
            subprocess.run(["scancel", *jobs], capture_output=True, env=env, timeout=30)
            try:
                _wait(lambda: not queued(), 30, "cancelled jobs to end")
            except RuntimeError as error:
                print(error, file=sys.stderr)
    for name in ("slurmd", "slurmctld", "munged"):
        pid = state["pids"].get(name)
        if pid is None or not _alive(pid):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            try:  # reap it if it is our child
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.1)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    link = Path(state["etc_link"])
    if link.is_symlink() and Path(os.readlink(link)) == root / "slurm.conf":
        link.unlink()


def main(argv):
    if len(argv) >= 1 and argv[0] == "install":
        why = install()
        print(why or "installed")
        return 1 if why else 0
    if len(argv) == 2 and argv[0] == "up":
        print(json.dumps(up(argv[1]), indent=1))
        return 0
    if len(argv) == 2 and argv[0] == "down":
        down(argv[1])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
