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
