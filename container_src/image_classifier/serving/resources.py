"""What this container may use, read once at start: its CPUs (CPU set and CPU quota) and its memory (its
cgroup's limit, else the host's RAM).

The CPU set alone (os.sched_getaffinity) misses a CPU quota: `docker run --cpus 1` and SageMaker's inference
components leave every core in the set and cap the time instead. Python's os.cpu_count() sees the host, and
so does /proc/meminfo: a container started with `--memory 3g` on a 24 GB host still reads 24 GB there. The
limits are in the container's cgroup: cgroup v2 `memory.max` and `cpu.max`, v1 `memory/memory.limit_in_bytes`
and `cpu/cpu.cfs_quota_us` / `cpu.cfs_period_us`. A limit set on an ancestor cgroup applies as well, so every
folder from the process's own cgroup up to the mount is read and the smallest limit wins (inside a container
the mount usually is its own cgroup, while /proc/self/cgroup names the host's path, which is not there).

Every path is under `root`, so a test can lay out a fake /proc and /sys/fs/cgroup tree. Torch-free, cheap.
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_MOUNT = Path("sys/fs/cgroup")
SELF_CGROUP = Path("proc/self/cgroup")
MEMINFO = Path("proc/meminfo")
# cgroup v1 writes "no limit" as 2^63-1 rounded down to a page; anything this large is no limit.
NO_LIMIT_BYTES = 1 << 60
MIB = 1 << 20


def _text(path):
    try:
        return path.read_text().strip()
    except OSError:
        return None


def own_cgroups(root):
    """{controller: the process's cgroup path} from /proc/self/cgroup ('' for cgroup v2's unified line)."""
    paths = {}
    for line in (_text(Path(root) / SELF_CGROUP) or "").splitlines():
        number, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if not number.isdigit():
            continue
        for controller in (controllers.split(",") if controllers else [""]):
            paths[controller] = path
    return paths


def limit_folders(root, controller):
    """The cgroup folders whose `controller` limits apply to this process: its own cgroup and every ancestor up
    to the mount (the ones that exist). v2 when the unified hierarchy is mounted, else v1's controller folder."""
    mount = Path(root) / CGROUP_MOUNT
    paths = own_cgroups(root)
    if (mount / "cgroup.controllers").is_file():  # cgroup v2 (unified)
        base, path = mount, paths.get("", "/")
    else:
        base, path = mount / controller, paths.get(controller, "/")
    folders, folder = [], base / path.lstrip("/")
    while True:
        if folder.is_dir():
            folders.append(folder)
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    return folders


def memory_limit(root="/"):
    """The cgroup memory limit in bytes, None where there is none."""
    limits = []
    for folder in limit_folders(root, "memory"):
        for name in ("memory.max", "memory.limit_in_bytes"):  # v2, v1
            value = _text(folder / name)
            if value and value.isdigit() and int(value) < NO_LIMIT_BYTES:
                limits.append(int(value))
    return min(limits, default=None)


def cpu_quota(root="/"):
    """The cgroup CPU quota in CPUs (1.5 = one and a half cores' time per period), None where there is none."""
    quotas = []
    for folder in limit_folders(root, "cpu"):
        fields = (_text(folder / "cpu.max") or "").split()  # v2: "QUOTA PERIOD" or "max PERIOD"
        if len(fields) != 2:  # v1: two files, quota -1 for none
            fields = [_text(folder / "cpu.cfs_quota_us") or "", _text(folder / "cpu.cfs_period_us") or ""]
        quota, period = fields
        if quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas, default=None)


def host_memory(root="/"):
    """The host's RAM in bytes (MemTotal), None where /proc/meminfo cannot be read."""
    for line in (_text(Path(root) / MEMINFO) or "").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


def cpu_set_size():
    """Cores in this process's CPU set (a container's --cpuset-cpus), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Resources:
    cores: int  # cores the process may keep busy: its CPU set, within its CPU quota
    memory_mib: int  # memory it may use: the smaller of its cgroup limit and the host's RAM
    memory_source: str  # where memory_mib comes from, for the log

    def describe(self):
        return f"{self.cores} core(s), {self.memory_mib:,} MiB ({self.memory_source})"


def read(root="/", cpu_set=None):
    """The container's Resources. A fractional quota is rounded up, as the JVM does (`--cpus 1.5`: 2 cores, each
    busy part of the time): rounding down would leave the half core idle."""
    cores = cpu_set or cpu_set_size()
    quota = cpu_quota(root)
    if quota is not None:
        cores = max(1, min(cores, math.ceil(quota - 1e-9)))
    limit, ram = memory_limit(root), host_memory(root)
    if limit is not None and (ram is None or limit < ram):
        memory, source = limit, "cgroup memory limit"
    elif ram is not None:
        memory, source = ram, "host RAM"
    else:
        memory, source = None, "unknown"
    return Resources(cores, memory // MIB if memory else 0, source)
