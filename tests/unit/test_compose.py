"""docker-compose.yml, parsed (no Docker engine runs here) and checked against the code."""

import runpy
from pathlib import Path

import pytest
import yaml
from celery.app.utils import find_app

import app as gateway
from workers import settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_services_are_redis_gateway_worker_with_healthchecks():
    assert set(SERVICES) == {"redis", "gateway", "worker"}
    for name, service in SERVICES.items():
        assert service["healthcheck"]["test"], name


def test_gateway_and_worker_share_one_image_built_from_the_dockerfile():
    assert SERVICES["gateway"]["image"] == SERVICES["worker"]["image"]
    assert SERVICES["gateway"]["build"] == SERVICES["worker"]["build"] == "."
    assert (ROOT / "Dockerfile").is_file()


def test_gateway_runs_gunicorn_on_the_app_factory():
    command = SERVICES["gateway"]["command"]
    assert command[:2] == ["gunicorn", "app:create_app()"]
    module, factory = command[1].split(":")
    assert module == "app" and factory == "create_app()" and callable(gateway.create_app)
    assert "5000:5000" in SERVICES["gateway"]["ports"]
    assert "5000" in command[command.index("--bind") + 1]


def test_gunicorn_serves_on_port_5000_by_default_like_flask_run():
    config = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    assert config["bind"].endswith(":5000")


def test_worker_command_finds_the_celery_app_with_the_task():
    assert SERVICES["worker"]["command"] == ["celery", "-A", "workers", "worker", "--loglevel", "INFO"]
    celery_app = find_app("workers")
    celery_app.loader.import_default_modules()
    assert "datajobs.run_job" in celery_app.tasks


@pytest.mark.parametrize("name", ["gateway", "worker"])
def test_environment_names_are_settings(name):
    env = SERVICES[name]["environment"]
    assert set(env) <= set(settings.SETTINGS)
    assert env["REDIS_URL"].startswith("redis://redis:6379")


def test_redis_keeps_data_and_never_evicts():
    command = " ".join(SERVICES["redis"]["command"])
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
