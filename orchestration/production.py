"""The production storage on one machine: a throwaway PostgreSQL server, and on it Dagster's
instance and MLflow's tracking server configured as k8s/ deploys them.

Dagster's instance is the storage the Helm chart renders from k8s/dagster/values.yaml's
`postgresql` section (run, event log and schedule storage in one database, the password from
DAGSTER_PG_PASSWORD); MLflow's server runs k8s/mlflow/deployment.yaml's command line with a
PostgreSQL backend store, as the production Secret `cameo-mlflow` sets it. Only the server's
address, the artifact folder and the port are this machine's. The tests and
bench/orchestration.py run the chain on it.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from serving.server import free_port, wait_until_answering

K8S = Path(__file__).resolve().parents[1] / "k8s"
DAGSTER_VALUES = K8S / "dagster" / "values.yaml"
MLFLOW_DEPLOYMENT = K8S / "mlflow" / "deployment.yaml"
MLFLOW_KUSTOMIZATION = K8S / "mlflow" / "kustomization.yaml"
MLFLOW_AUTH_CONFIG = K8S / "mlflow" / "basic_auth.ini"
# The accounts' store in production: a database of its own beside the runs' (the ini in a Secret).
MLFLOW_AUTH_DATABASE = "mlflow_auth"
# The Secret's backend store URI names this role and database (k8s/mlflow/kustomization.yaml).
MLFLOW_DATABASE = "mlflow"
MLFLOW_SCHEME = "postgresql+psycopg2"
# The storages the Helm chart's instance ConfigMap puts in PostgreSQL.
DAGSTER_STORAGES = {
    "run_storage": ("dagster_postgres.run_storage", "PostgresRunStorage"),
    "event_log_storage": ("dagster_postgres.event_log", "PostgresEventLogStorage"),
    "schedule_storage": ("dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
}


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (initdb, pg_ctl) on this machine."""


def postgres_bin() -> Path:
    """The folder of initdb and pg_ctl: on PATH, else Debian's newest /usr/lib/postgresql/N."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl", path=str(Path(found).resolve().parent)):
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if versions:
        return versions[-1].parent
    raise PostgresUnavailable(
        "PostgreSQL's server binaries (initdb, pg_ctl) are not installed: "
        "apt-get install postgresql"
    )


class PostgresServer:
    """A PostgreSQL server in a temp dir on 127.0.0.1 and a free port, removed when stopped.

    The server refuses to run as root: under root it runs as the `postgres` user (Debian's
    package creates it), else `nobody`. Roles log in with a password (scram-sha-256), as
    in production.
    """

    def __init__(self, superuser_password: str = "cameo") -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.password = superuser_password
        self.root: Path | None = None
        self._user: str | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def _run(self, *command: str) -> str:
        done = subprocess.run(
            [str(self.bin / command[0]), *command[1:]],
            capture_output=True,
            text=True,
            user=self._user,
            cwd=self.root,
            timeout=120,
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed:\n{done.stdout}{done.stderr}{tail}")
        return done.stdout

    def start(self) -> PostgresServer:
        self.root = Path(tempfile.mkdtemp(prefix="cameo-postgres-"))
        if os.geteuid() == 0:
            self._user = "postgres" if _user_exists("postgres") else "nobody"
            account = pwd.getpwnam(self._user)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if self._user:
            account = pwd.getpwnam(self._user)
            os.chown(password_file, account.pw_uid, account.pw_gid)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=scram-sha-256",
            f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C",
        )  # fmt: skip
        # A throwaway server: no fsync (the test's data dies with it), the socket in its dir.
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.root / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def url(
        self,
        user: str = "postgres",
        password: str | None = None,
        db: str = "postgres",
        scheme: str = "postgresql",
    ) -> str:
        return f"{scheme}://{user}:{password or self.password}@127.0.0.1:{self.port}/{db}"

    def execute(self, sql: str, db: str = "postgres") -> list[tuple]:
        """Run `sql` as the superuser (autocommit, as CREATE DATABASE needs); its rows."""
        import psycopg2

        connection = psycopg2.connect(self.url(db=db))
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def create_database(self, name: str, password: str) -> None:
        """A role and a database of its own, both `name`, as production gives each service."""
        self.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        self.execute(f"CREATE DATABASE {name} OWNER {name}")

    def database_bytes(self, name: str) -> int:
        return int(self.execute(f"SELECT pg_database_size('{name}')")[0][0])

    def stop(self) -> None:
        if self.root is None:
            return
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def dagster_instance_config(
    server: PostgresServer, values_path: Path = DAGSTER_VALUES
) -> dict[str, Any]:
    """The dagster.yaml the Helm chart renders from `values_path`'s `postgresql` section
    (its storages; the run launcher stays local), with the host and port of `server`."""
    values = yaml.safe_load(values_path.read_text())
    postgresql = values["postgresql"]
    database = {
        "username": postgresql["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": "127.0.0.1",
        "db_name": postgresql["postgresqlDatabase"],
        "port": server.port,
        "params": postgresql.get("postgresqlParams") or {},
        "scheme": postgresql["postgresqlScheme"],
    }
    config: dict[str, Any] = {
        storage: {"module": module, "class": cls, "config": {"postgres_db": database}}
        for storage, (module, cls) in DAGSTER_STORAGES.items()
    }
    config["telemetry"] = {"enabled": values["telemetry"]["enabled"]}
    return config


def dagster_home(server: PostgresServer, home: Path, password: str = "dagster") -> dict[str, str]:
    """Create the Helm values' database and role on `server` and a DAGSTER_HOME at `home`
    whose instance is it; the environment that selects it."""
    values = yaml.safe_load(DAGSTER_VALUES.read_text())["postgresql"]
    if values["postgresqlDatabase"] != values["postgresqlUsername"]:
        raise ValueError("k8s/dagster/values.yaml: one role per database, named alike")
    server.create_database(values["postgresqlDatabase"], password)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(dagster_instance_config(server)))
    return {"DAGSTER_HOME": str(home), "DAGSTER_PG_PASSWORD": password}


def mlflow_server_command(env: Mapping[str, str], port: int) -> list[str]:
    """k8s/mlflow/deployment.yaml's container command, its `$(VAR)`s from `env` as
    Kubernetes expands them, on 127.0.0.1:`port` instead of the pod's 0.0.0.0:5000."""
    deployment = yaml.safe_load(MLFLOW_DEPLOYMENT.read_text())
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    command = [*container["command"], *container["args"]]
    command = [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], part) for part in command]
    command[command.index("--host") + 1] = "127.0.0.1"
    command[command.index("--port") + 1] = str(port)
    command[0] = str(Path(sys.executable).parent / command[0])  # this venv's mlflow
    return command


def mlflow_configmap() -> dict[str, str]:
    """The cameo-mlflow ConfigMap's literals (k8s/mlflow/kustomization.yaml)."""
    kustomization = yaml.safe_load(MLFLOW_KUSTOMIZATION.read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "cameo-mlflow"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def mlflow_auth_config(database_uri: str, path: Path) -> Path:
    """k8s/mlflow/basic_auth.ini with its accounts' store at `database_uri`, written to `path`
    (what production puts in a Secret instead of the ConfigMap)."""
    config = configparser.ConfigParser()
    config.read(MLFLOW_AUTH_CONFIG)
    config["mlflow"]["database_uri"] = database_uri
    with path.open("w") as file:
        config.write(file)
    return path


class TrackingServer:
    """`mlflow server` as k8s/mlflow deploys it (`cameo-auth`: accounts, and only promoters move
    aliases), with the production Secrets' PostgreSQL stores on `server` (runs, and accounts)
    and artifacts under `artifacts`; stopped by its process group. `admin`: the admin's user
    name and password, which create the services' accounts (`cameo model accounts`)."""

    def __init__(self, server: PostgresServer, artifacts: Path, password: str = "mlflow") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server.create_database(MLFLOW_DATABASE, password)
        # The production Secret's driver (k8s/mlflow/kustomization.yaml).
        backend = server.url(MLFLOW_DATABASE, password, MLFLOW_DATABASE, MLFLOW_SCHEME)
        configmap = mlflow_configmap()
        hosts = configmap["MLFLOW_ALLOWED_HOSTS"]
        # The Secret's keys win over the ConfigMap's, as in the Deployment's envFrom.
        self.env = {
            **configmap,
            "MLFLOW_BACKEND_STORE_URI": backend,
            "MLFLOW_ARTIFACTS_DESTINATION": str(artifacts),
            "MLFLOW_ALLOWED_HOSTS": f"{hosts},127.0.0.1:{self.port}",
        }
        server.create_database(MLFLOW_AUTH_DATABASE, password)
        accounts = server.url(MLFLOW_AUTH_DATABASE, password, MLFLOW_AUTH_DATABASE, MLFLOW_SCHEME)
        config = mlflow_auth_config(accounts, artifacts.parent / "basic_auth.ini")
        self.admin = ("admin", secrets.token_hex(16))
        # The Secret cameo-mlflow-auth's keys, as the Deployment's env reads them.
        self.env |= {
            "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1],
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        }
        self.command = mlflow_server_command(self.env, self.port)
        self.log_path = artifacts.parent / "mlflow-server.log"
        self.process: subprocess.Popen | None = None

    def start(self, wait_s: float = 120.0) -> TrackingServer:
        env = {**os.environ, **self.env, "MLFLOW_DISABLE_TELEMETRY": "true"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_until_answering(
            "mlflow server", f"{self.url}/health", self.process, wait_s, self.log_path, self.stop
        )
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> TrackingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
