"""The deployment files: docker-compose.yml as Compose itself reads it, and the Dockerfile.

The compose checks run the real `docker-compose config` (Debian's 1.29, installed by
scripts/install_docker_compose.sh; it needs no Docker daemon) and inspect its normalised
output, so they test what Compose will actually run, after interpolation and YAML merges.
The parser below accepts both the v1 and the v2 output shapes (short/long port syntax,
string/list commands).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SENTINEL_PASSWORD = "sentinel-pw-7f3a9c"
STORAGE_URL = f"postgresql+psycopg://proxstudy:{SENTINEL_PASSWORD}@postgres:5432/proxstudy"

COMPOSE = shutil.which("docker-compose")
needs_compose = pytest.mark.skipif(
    COMPOSE is None,
    reason="docker-compose not installed (run scripts/install_docker_compose.sh)",
)


def _compose_config(tmp_path: Path, password: str | None) -> subprocess.CompletedProcess:
    """`docker-compose config` with a controlled environment and no .env file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POSTGRES_", "PROXSTUDY_", "RAY_", "DASHBOARD_"))}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    return subprocess.run(
        [
            COMPOSE, "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT),
            "--env-file", str(empty_env_file), "--profile", "run", "--profile", "cpu",
            "config",
        ],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> dict[str, Any]:
    result = _compose_config(tmp_path_factory.mktemp("compose"), SENTINEL_PASSWORD)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each published port, from either output syntax."""
    out = []
    for port in service.get("ports", []) or []:
        if isinstance(port, dict):
            out.append((str(port.get("host_ip", "")), str(port.get("published", "")), str(port["target"])))
        else:
            parts = str(port).split("/")[0].split(":")
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
            elif len(parts) == 2:
                out.append(("", parts[0], parts[1]))
            else:
                out.append(("", "", parts[0]))
    return out


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


@needs_compose
def test_services_exist(config):
    assert {"postgres", "ray-head", "ray-worker", "dashboard", "run"} <= set(config["services"])


@needs_compose
def test_ray_head_schedules_only(config):
    command = _command(config["services"]["ray-head"])
    assert command[:2] == ["ray", "start"]
    assert "--head" in command and "--block" in command
    assert "--port=6379" in command
    assert "--num-cpus=0" in command and "--num-gpus=0" in command


@needs_compose
def test_ray_worker_gets_gpus_joins_head_and_scales(config):
    worker = config["services"]["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count") in ("all", -1, 1)
        for d in devices
    ), devices
    command = " ".join(_command(worker))
    assert "ray start --address=ray-head:6379" in command and "--block" in command
    # `--scale ray-worker=N` needs replicas that do not collide on a name or a host port.
    assert "container_name" not in worker
    assert _ports(worker) == []
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"


@needs_compose
def test_cpu_worker_profile_has_no_gpu_reservation(config):
    worker = config["services"]["ray-worker-cpu"]
    assert "deploy" not in worker
    assert "ray start --address=ray-head:6379" in " ".join(_command(worker))


@needs_compose
def test_postgres_has_healthcheck_and_named_volume(config):
    postgres = config["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    test = postgres["healthcheck"]["test"]
    assert "pg_isready" in (test if isinstance(test, str) else " ".join(test))
    volumes = postgres["volumes"]
    sources = [v["source"] if isinstance(v, dict) else v.split(":")[0] for v in volumes]
    targets = [v["target"] if isinstance(v, dict) else v.split(":")[1] for v in volumes]
    assert "/var/lib/postgresql/data" in targets
    assert sources[targets.index("/var/lib/postgresql/data")] in config["volumes"]
    assert _env(postgres)["POSTGRES_PASSWORD"] == SENTINEL_PASSWORD
    # Reachable from the host only on loopback, if at all.
    assert all(ip == "127.0.0.1" for ip, _, _ in _ports(postgres))


@needs_compose
def test_dashboard_waits_for_healthy_postgres_and_listens_on_loopback(config):
    dashboard = config["services"]["dashboard"]
    assert dashboard["depends_on"]["postgres"]["condition"] == "service_healthy"
    command = _command(dashboard)
    assert command[:2] == ["proxstudy", "dashboard"]
    assert "--allow-remote" in command and "0.0.0.0" in command
    assert ("127.0.0.1", "8050", "8050") in _ports(dashboard)


@needs_compose
def test_storage_url_comes_from_env_not_command_lines(config):
    for name in ("ray-head", "ray-worker", "dashboard", "run"):
        service = config["services"][name]
        assert _env(service)["PROXSTUDY_STORAGE"] == STORAGE_URL, name
        # A password on a command line shows in `ps` and in Ray's logs.
        assert SENTINEL_PASSWORD not in " ".join(_command(service)), name
        assert SENTINEL_PASSWORD not in " ".join(map(str, service.get("entrypoint") or [])), name


@needs_compose
def test_every_ray_process_has_the_same_explicit_auth_mode(config):
    # Left unset, a head that finds a token in its home switches to token auth and nodes or
    # drivers without it cannot join: the mode is set for every container alike.
    for name in ("ray-head", "ray-worker", "ray-worker-cpu", "run"):
        assert _env(config["services"][name])["RAY_AUTH_MODE"] == "disabled", name


@needs_compose
def test_run_service_launches_a_sweep_into_the_cluster(config):
    run = config["services"]["run"]
    assert "run" in run["profiles"]
    command = _command(run)
    assert command[:3] == ["proxstudy", "run", "search_spaces/digits-table1-quick.yaml"]
    assert command[command.index("--ray-address") + 1] == "ray-head:6379"
    # The driver joins as a node without resources, so every trial goes to a worker.
    entrypoint = " ".join(run["entrypoint"])
    assert "ray start --address=ray-head:6379 --num-cpus=0 --num-gpus=0" in entrypoint
    assert run["depends_on"]["postgres"]["condition"] == "service_healthy"


@needs_compose
def test_config_fails_without_password(tmp_path):
    result = _compose_config(tmp_path, None)
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr


def test_no_password_hard_coded_in_compose_file():
    raw = COMPOSE_FILE.read_text()
    # Every password or token value is an interpolation of the environment.
    for match in re.finditer(r"^\s*-?\s*\w*(?:PASSWORD|TOKEN)\w*\s*[:=]\s*(\S+)", raw, re.M | re.I):
        assert match.group(1).startswith("${"), match.group(0)
    for match in re.finditer(r"://[^/\s:@]+:([^@\s]+)@", raw):
        assert match.group(1).startswith("${POSTGRES_PASSWORD"), match.group(0)


def test_env_example_holds_placeholders_and_env_is_ignored():
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^POSTGRES_PASSWORD=change-me$", example, re.M)
    gitignore = (ROOT / ".gitignore").read_text().split()
    assert ".env" in gitignore
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_pins_torch_like_the_setup_script():
    instructions = _dockerfile_instructions()
    args = dict(rest.split("=", 1) for kw, rest in instructions if kw == "ARG" and "=" in rest)
    setup_pin = re.search(r"torch==([0-9.]+)", (ROOT / "scripts/setup.sh").read_text()).group(1)
    assert args["TORCH_VERSION"] == setup_pin
    runs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    assert '"torch==${TORCH_VERSION}"' in runs
    # All nodes and drivers of a cluster must share one Ray version: pinned, dashboard included.
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["RAY_VERSION"])
    assert '"ray[default,tune]==${RAY_VERSION}"' in runs


def test_dockerfile_installs_the_project_as_non_root():
    instructions = _dockerfile_instructions()
    keywords = [kw for kw, _ in instructions]
    assert keywords[0] == "FROM"
    runs = [rest for kw, rest in instructions if kw == "RUN"]
    assert any(re.search(r"pip install \.(\s|$)", r) for r in runs)
    assert "WORKDIR" in keywords
    users = [rest for kw, rest in instructions if kw == "USER"]
    assert users and users[-1] not in ("root", "0")
    # Everything pip needs to build the package is copied in before `pip install .`.
    copied = {part.rstrip("/") for kw, rest in instructions if kw == "COPY" for part in rest.split()[:-1]}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    package_dir = setuptools.get("package-dir", {})
    top_folders = {package_dir.get(p, p).split(".")[0] for p in setuptools["packages"]}
    needed = {"pyproject.toml", *top_folders}
    if "readme" in pyproject["project"]:
        needed.add(pyproject["project"]["readme"])
    assert needed <= copied, needed - copied
    missing = [name for name in sorted(copied) if not (ROOT / name).exists()]
    assert not missing, f"the Dockerfile copies files the repository lacks: {missing}"
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert not (needed & ignored)


def test_dockerfile_holds_no_secrets():
    for keyword, rest in _dockerfile_instructions():
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"PASSWORD|SECRET|TOKEN|postgresql", rest, re.I), rest
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".git" in ignored and ".venv" in ignored
