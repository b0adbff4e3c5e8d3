"""Process settings of the entry points."""

import resource
import subprocess
import sys

from procs import env


def test_open_files_limit_is_raised_to_the_hard_limit():
    """A coordinator or relay needs a descriptor per worker: the soft limit goes up to the hard one."""
    code = ("import resource; from lenet.runtime import raise_open_files_limit\n"
            "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
            "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
            "print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), timeout=60)
    assert out.returncode == 0, out.stderr
    reported, now = map(int, out.stdout.split())
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert reported == now > 256
    assert hard == resource.RLIM_INFINITY or now == hard


def test_the_host_id_is_a_hash_of_the_boot_id_the_same_for_every_process_of_a_kernel(tmp_path):
    from lenet.runtime import host_id

    boot = tmp_path / "boot_id"
    boot.write_text("c0ffee00-1234-5678-9abc-def012345678\n")
    first = host_id(str(boot))
    assert first == host_id(str(boot)) and len(first) == 16 and not first.strip("0123456789abcdef")
    assert "c0ffee" not in first  # the id itself is not sent
    boot.write_text("another boot")
    assert host_id(str(boot)) != first
    assert host_id(str(tmp_path / "missing")) == ""  # unknown: no sharing assumed


def test_usable_cores_follow_a_cgroup_quota_rounded_up(tmp_path):
    import os

    from lenet.runtime import usable_cores

    affinity = len(os.sched_getaffinity(0))
    quota = tmp_path / "cpu.max"
    quota.write_text("max 100000\n")
    assert usable_cores(str(quota)) == affinity
    quota.write_text("50000 100000\n")  # half a core still keeps one busy
    assert usable_cores(str(quota)) == 1
    quota.write_text(f"{100000 * affinity + 1} 100000\n")
    assert usable_cores(str(quota)) == affinity  # never more than the affinity
    assert usable_cores(str(tmp_path / "missing")) == affinity
