import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tests start private local Ray instances: never turn token auth on by accident (see README).
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("ROUTER_PROGRESS", "0")


def run_cli(*args: str, timeout: float = 300, env: dict | None = None):
    """Run `router ...` in a fresh interpreter, as a user would."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "router.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"evaluation data not found at {SHARED_DATA}")
    return SHARED_DATA


def unshare_works() -> str | None:
    """None when a private PID namespace can be made here (killing its first process ends every
    process in it, Ray's included), else why not."""
    import shutil
    import subprocess

    if shutil.which("unshare") is None:
        return "the `unshare` command is not installed"
    try:
        r = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "true"],
                           capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"`unshare` failed: {e}"
    if r.returncode != 0:
        return f"`unshare --pid --fork --mount-proc` is not permitted here: {r.stderr.strip()}"
    return None
