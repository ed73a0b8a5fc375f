"""glibc malloc tuning for CPU training: applied once, and never over the user's own choice."""

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)


def applied(**env: str) -> str:
    """What retain_freed_memory returns twice in a fresh process with this environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "ANOMAP_"))}
    clean.pop("GLIBC_TUNABLES", None)
    code = "from anomap.allocator import retain_freed_memory as r; print(r(), r())"
    result = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_applied_by_default_once_per_process():
    assert applied() == "True True"  # cached: the second call changes nothing more


@pytest.mark.parametrize(
    "env", [{"ANOMAP_MALLOC_TUNING": "0"}, {"MALLOC_ARENA_MAX": "2"}, {"GLIBC_TUNABLES": "x"}]
)
def test_left_alone_when_the_user_chose(env):
    assert applied(**env) == "False False"
