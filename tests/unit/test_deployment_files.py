"""The deployment files agree with the Procfile and with each other.

No Docker engine runs where the suite does, so the files are parsed and checked for what
can be checked without building: the services and their commands are the Procfile's, the
images run as a non-root user with a health check, the final production stage carries no
build tools, every long-running service has a health check, and CI runs `make test`.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from settings import Settings
from tests.helpers import ROOT

PROCESSES = {"release", "web", "worker", "beat", "flower"}
# compose service -> Procfile process
SERVICE_PROCESS = {
    "migrate": "release",
    "api": "web",
    "worker": "worker",
    "beat": "beat",
    "flower": "flower",
}
LONG_RUNNING = ["postgres", "redis", "api", "worker", "beat", "flower"]
COMPOSE_FILES = {
    "dev": ROOT / "compose" / "docker-compose.dev.yml",
    "prod": ROOT / "compose" / "docker-compose.yml",
}
DOCKERFILES = {"dev": ROOT / "Dockerfile.dev", "prod": ROOT / "Dockerfile.prod"}
ARCH_WORDS = re.compile(r"amd64|x86_64|aarch64|arm64|\bcurl\b|\bwget\b", re.IGNORECASE)


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {
        name.strip(): shlex.split(command)
        for name, _, command in (line.partition(":") for line in lines if line.strip())
    }


def compose(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILES[kind].read_text())
    return loaded


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments out."""
    joined, parts = [], []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            joined.append(" ".join(parts))
            parts = []
    assert not parts, f"{path.name} ends inside a continued line"
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in joined]


def final_stage(path: Path) -> list[tuple[str, str]]:
    steps = instructions(path)
    last_from = max(i for i, (name, _) in enumerate(steps) if name == "FROM")
    return steps[last_from:]


# --------------------------------------------------------------------------- Procfile


def test_the_procfile_has_the_five_processes() -> None:
    assert set(procfile()) == PROCESSES


# --------------------------------------------------------------------------- compose


@pytest.mark.parametrize("kind", ["dev", "prod"])
def test_compose_runs_the_procfile_processes_with_their_commands(kind: str) -> None:
    services = compose(kind)["services"]
    commands = procfile()
    assert {"postgres", "redis", *SERVICE_PROCESS} <= set(services)
    for service, process in SERVICE_PROCESS.items():
        command = services[service]["command"]
        expected = commands[process]
        if kind == "dev" and service == "api":
            assert command == [*expected, "--reload"], command  # reload is the one addition
        else:
            assert command == expected, (service, command)


@pytest.mark.parametrize("kind", ["dev", "prod"])
def test_every_long_running_service_has_a_health_check(kind: str) -> None:
    services = compose(kind)["services"]
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


@pytest.mark.parametrize("kind", ["dev", "prod"])
def test_processes_start_after_the_migration_step(kind: str) -> None:
    services = compose(kind)["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["migrate"].get("restart") == "no"
    for name in ("api", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


@pytest.mark.parametrize("kind", ["dev", "prod"])
def test_compose_builds_its_dockerfile_from_the_repository_root(kind: str) -> None:
    for name in SERVICE_PROCESS:
        build = compose(kind)["services"][name]["build"]
        context = (COMPOSE_FILES[kind].parent / build["context"]).resolve()
        assert context == ROOT
        assert (context / build["dockerfile"]) == DOCKERFILES[kind]


@pytest.mark.parametrize("kind", ["dev", "prod"])
def test_flower_is_published_on_loopback_with_credentials(kind: str) -> None:
    flower = compose(kind)["services"]["flower"]
    assert all(port.startswith("127.0.0.1:") for port in flower["ports"]), flower["ports"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"]
    assert flower["environment"]["FLOWER_PORT"] == "5555"


def test_production_compose_requires_its_secrets_and_outlasts_graceful_stops() -> None:
    services = compose("prod")["services"]
    env = services["api"]["environment"]
    assert env["CONVEYOR_ENV"] == "production"
    assert env["JWT_SECRET_KEY"].startswith("${JWT_SECRET_KEY:?")
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith(
        "${FLOWER_BASIC_AUTH:?"
    )
    assert ":?" in env["DATABASE_URL"], "no default database password"
    graceful = _gunicorn_setting("graceful_timeout")
    assert int(services["api"]["stop_grace_period"].removesuffix("s")) > graceful
    for name in SERVICE_PROCESS:
        assert services[name]["read_only"] is True, name
        assert "/tmp" in services[name]["tmpfs"], name


def test_a_closed_loop_filling_every_thread_is_busy_not_behind() -> None:
    """Requests waiting for an admission slot sit in gunicorn's threads: at most threads -
    slots of them. "Behind" (api/admission.py: 503 after a short wait) must take more than
    that, a request queued for a thread, or a closed loop of as many clients as threads
    would be shed at a slow moment."""
    defaults = Settings.model_fields
    threads = _gunicorn_setting("threads")
    assert isinstance(threads, int)
    waiting_in_threads = threads - defaults["admission_slots"].default
    assert defaults["admission_behind_queue"].default > waiting_in_threads


def _gunicorn_setting(name: str) -> object:
    """A literal assignment of gunicorn.conf.py, read without running the file (running it
    prepares the metrics directory and sets PROMETHEUS_MULTIPROC_DIR, as gunicorn needs)."""
    tree = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise AssertionError(f"gunicorn.conf.py does not set {name}")


# --------------------------------------------------------------------------- Dockerfiles


@pytest.mark.parametrize("kind", ["dev", "prod"])
def test_images_run_as_a_non_root_user(kind: str) -> None:
    users = [args for name, args in final_stage(DOCKERFILES[kind]) if name == "USER"]
    assert users, f"Dockerfile.{kind} never leaves root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users


def test_the_production_image_is_multi_stage_slim_and_healthy() -> None:
    path = DOCKERFILES["prod"]
    steps = instructions(path)
    assert sum(name == "FROM" for name, _ in steps) >= 2
    base = next(args for name, args in steps if name == "ARG" and args.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11-slim(-\w+)?", base), base
    final = final_stage(path)
    runs = " ".join(args for name, args in final if name == "RUN")
    for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
        assert tool not in runs, f"the final stage installs {tool}"
    assert [n for n, _ in final].count("HEALTHCHECK") == 1
    cmd = next(args for name, args in final if name == "CMD")
    assert json.loads(cmd) == procfile()["web"]
    # Nothing architecture-specific: no downloads, no architecture names.
    assert not ARCH_WORDS.search(
        "\n".join(f"{n} {a}" for n, a in steps if n in ("RUN", "ADD", "FROM", "ARG"))
    )


def test_the_dockerignore_keeps_local_state_and_secrets_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", ".conveyor"} <= ignored
    # What the project installs is what its processes import.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    modules = project["tool"]["setuptools"]["py-modules"]
    for name in [p.removesuffix("*") for p in packages] + [f"{m}.py" for m in modules]:
        assert (ROOT / name).exists(), name
        assert name not in ignored, f"the image would miss {name}"


def test_the_dev_image_installs_the_dev_extras() -> None:
    runs = " ".join(args for name, args in instructions(DOCKERFILES["dev"]) if name == "RUN")
    assert "pip install --editable '.[dev]'" in runs


# --------------------------------------------------------------------------- devcontainer


def test_the_devcontainer_opens_a_service_of_the_dev_compose_file() -> None:
    path = ROOT / ".devcontainer" / "devcontainer.json"
    text = "\n".join(
        line for line in path.read_text().splitlines() if not line.strip().startswith("//")
    )
    config = json.loads(text)
    (compose_file,) = config["dockerComposeFile"]
    assert (path.parent / compose_file).resolve() == COMPOSE_FILES["dev"]
    services = compose("dev")["services"]
    assert config["service"] in services
    assert set(config["runServices"]) <= set(services)
    mounts = services[config["service"]]["volumes"]
    assert f"..:{config['workspaceFolder']}" in mounts


# --------------------------------------------------------------------------- CI


def workflow() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(
        (ROOT / ".github" / "workflows" / "backend.yml").read_text()
    )
    return loaded


def runs(job: dict[str, Any]) -> list[str]:
    return [step["run"].strip() for step in job["steps"] if "run" in step]


def test_ci_lints_type_checks_and_runs_make_test_on_service_containers() -> None:
    jobs = workflow()["jobs"]
    assert "make lint" in runs(jobs["lint"])
    assert "make test" in runs(jobs["test"])
    services = jobs["test"]["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    assert all("--health-cmd" in s["options"] for s in services.values())
    assert jobs["test"]["env"]["CI"] == "true"
    for name in ("lint", "test"):
        setup = next(
            s for s in jobs[name]["steps"] if s.get("uses", "").startswith("actions/setup-python")
        )
        assert setup["with"]["python-version"] == "3.11"


def test_ci_builds_the_production_image_for_amd64_and_arm64() -> None:
    image = workflow()["jobs"]["image"]
    assert set(image["needs"]) == {"lint", "test"}
    uses = [step.get("uses", "") for step in image["steps"]]
    assert any(u.startswith("docker/setup-buildx-action") for u in uses)
    assert any(u.startswith("docker/setup-qemu-action") for u in uses)
    build = next(
        s for s in image["steps"] if s.get("uses", "").startswith("docker/build-push-action")
    )
    assert build["with"]["file"] == "Dockerfile.prod"
    assert set(build["with"]["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}


# --------------------------------------------------------------------------- README


def test_the_readme_says_why_each_deployment_folder_exists() -> None:
    readme = (ROOT / "README.md").read_text()
    for folder in (".github/", ".devcontainer/", "compose/", "telemetry/"):
        assert f"`{folder}`" in readme, folder
