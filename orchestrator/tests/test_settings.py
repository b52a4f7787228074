import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from orchestrator.env import env_bool, env_int, env_list, parse_database_url, parse_http_url, parse_redis_url


def test_postgres_url_becomes_a_database_entry():
    entry = parse_database_url("DATABASE_URL", "postgresql://app:s%40cret@db.local:6543/orchestrator?sslmode=require")
    assert entry == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "orchestrator",
        "USER": "app",
        "PASSWORD": "s@cret",
        "HOST": "db.local",
        "PORT": "6543",
        "OPTIONS": {"sslmode": "require"},
    }


def test_sqlite_url_keeps_an_absolute_path():
    assert parse_database_url("DATABASE_URL", "sqlite:////tmp/x.sqlite3")["NAME"] == "/tmp/x.sqlite3"


@pytest.mark.parametrize(
    "url, fragment",
    [
        ("mysql://root@localhost/db", "must start with postgres"),
        ("postgresql://localhost:notaport/db", "malformed port"),
        ("postgresql://localhost:5432/", "names no database"),
    ],
)
def test_malformed_database_url_is_refused_naming_the_variable(url, fragment):
    with pytest.raises(ImproperlyConfigured, match="DATABASE_URL") as error:
        parse_database_url("DATABASE_URL", url)
    assert fragment in str(error.value)


@pytest.mark.parametrize("url", ["http://localhost:6379", "redis://", "redis://host:port/0"])
def test_malformed_redis_url_is_refused(url):
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL"):
        parse_redis_url("REDIS_URL", url)


def test_http_url_is_normalised_and_checked():
    assert parse_http_url("OPENCODE_URL", "http://127.0.0.1:4096/") == "http://127.0.0.1:4096"
    with pytest.raises(ImproperlyConfigured, match="OPENCODE_URL"):
        parse_http_url("OPENCODE_URL", "127.0.0.1:4096")


def test_booleans_integers_and_lists(monkeypatch):
    monkeypatch.setenv("X_FLAG", "Yes")
    monkeypatch.setenv("X_NUMBER", "12")
    monkeypatch.setenv("X_LIST", "a.example, b.example,,")
    assert env_bool("X_FLAG") is True
    assert env_int("X_NUMBER", 1, minimum=1, maximum=20) == 12
    assert env_list("X_LIST") == ["a.example", "b.example"]
    monkeypatch.setenv("X_FLAG", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_FLAG"):
        env_bool("X_FLAG")
    monkeypatch.setenv("X_NUMBER", "99")
    with pytest.raises(ImproperlyConfigured, match="X_NUMBER must be at most 20"):
        env_int("X_NUMBER", 1, maximum=20)


def _start_django(**env):
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True, timeout=60,
    )


def test_start_up_fails_naming_a_malformed_variable():
    result = _start_django(DATABASE_URL="mysql://root@localhost/db")
    assert result.returncode != 0
    assert "ImproperlyConfigured: DATABASE_URL must start with" in result.stderr


def _settings_value(code, **env):
    environment = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    environment.update(env)
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); from django.conf import settings; print({code})"],
        cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_debug_is_off_unless_turned_on(tmp_path):
    assert _settings_value("settings.DEBUG", ORCHESTRATOR_VAR_DIR=str(tmp_path)) == "False"
    assert _settings_value("settings.DEBUG", ORCHESTRATOR_VAR_DIR=str(tmp_path), DEBUG="true") == "True"


def test_without_secret_key_one_is_generated_once_and_kept_under_var(tmp_path):
    first = _settings_value("settings.SECRET_KEY", ORCHESTRATOR_VAR_DIR=str(tmp_path))
    assert len(first) >= 50 and (tmp_path / "secret_key").read_text().strip() == first
    assert oct((tmp_path / "secret_key").stat().st_mode & 0o777) == "0o600"
    assert _settings_value("settings.SECRET_KEY", ORCHESTRATOR_VAR_DIR=str(tmp_path)) == first
    assert _settings_value("settings.SECRET_KEY", ORCHESTRATOR_VAR_DIR=str(tmp_path), SECRET_KEY="k" * 60) == "k" * 60


def test_a_malformed_throttle_rate_stops_start_up_naming_it():
    result = _start_django(API_THROTTLE_WRITE="lots")
    assert result.returncode != 0
    assert "API_THROTTLE_WRITE must look like 120/minute" in result.stderr


PRODUCTION = {
    "SECRET_KEY": "production-" + "s3cr3t-" * 8,
    "ALLOWED_HOSTS": "orchestrator.example.com",
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_PRELOAD": "true",
    "SECURE_PROXY_SSL_HEADER": "true",
}


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "DEBUG")}
    environment.update(PRODUCTION, ORCHESTRATOR_VAR_DIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def _database_entry(**env):
    code = ("import json, django; django.setup(); from django.conf import settings; "
            "d = settings.DATABASES['default']; print(json.dumps({'options': d.get('OPTIONS', {}), "
            "'max_age': d.get('CONN_MAX_AGE')}))")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    environment.update(env)
    result = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=environment,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_postgresql_connections_come_from_a_pool_unless_turned_off():
    url = "postgresql://app@db.local:5432/orchestrator"
    pooled = _database_entry(DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="40")
    assert pooled["options"]["pool"]["max_size"] == 40
    assert pooled["options"]["pool"]["min_size"] == 2
    assert pooled["max_age"] == 0  # Django refuses persistent connections together with a pool
    unpooled = _database_entry(DATABASE_URL=url, DATABASE_POOL_MAX_SIZE="0", DATABASE_CONN_MAX_AGE="60")
    assert "pool" not in unpooled["options"]
    assert unpooled["max_age"] == 60
    assert "pool" not in _database_entry()["options"]  # SQLite: no pool
