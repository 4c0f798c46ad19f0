"""The production profile's PostgreSQL (`vidops stack up --database postgresql://USER[:PASSWORD]@HOST[:PORT]/PREFIX`).

vidops keeps three databases there, made when missing: `<PREFIX>_prefect` (Prefect's server), `<PREFIX>_mlflow`
(MLflow's tracking and registry store) and `<PREFIX>_mlflow_auth` (MLflow's users). The servers migrate their own
schemas on start. The password never joins a URL that a command line, a log or a file shows: the servers read it from
the environment (PREFECT_SERVER_DATABASE_PASSWORD; libpq's PGPASSWORD for MLflow), and it comes from the URL given or
from PGPASSWORD (or libpq's ~/.pgpass, which the servers read too).
"""

from __future__ import annotations

import getpass
import os
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from vidops.components.errors import VidopsError

SERVICES = ("prefect", "mlflow", "mlflow_auth")  # the databases' suffixes
PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")


@dataclass(frozen=True)
class Database:
    """Where the stack's servers keep their state in PostgreSQL: the server (no password) and the databases' prefix."""

    host: str
    port: int
    user: str
    prefix: str
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> Database:
        """`postgresql://USER[:PASSWORD]@HOST[:PORT]/PREFIX`; a missing user is the login's, the port 5432, the prefix
        vidops. An error names what is wrong, never the password."""
        parts = urllib.parse.urlsplit(url)
        shown = _without_password(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise VidopsError(f"--database {shown}: expected postgresql://USER@HOST:PORT/PREFIX")
        if parts.query or parts.fragment:
            raise VidopsError(f"--database {shown}: takes no ?options or #fragment")
        prefix = parts.path.strip("/") or "vidops"
        if not PREFIX.fullmatch(prefix):
            raise VidopsError(
                f"--database {shown}: the prefix {prefix!r} must be lower-case letters, digits and _ "
                f"(databases {prefix}_prefect, ...)"
            )
        try:
            port = parts.port or 5432
        except ValueError:
            raise VidopsError(f"--database {shown}: the port is not a number") from None
        password = urllib.parse.unquote(parts.password) if parts.password else os.environ.get("PGPASSWORD")
        user = urllib.parse.unquote(parts.username) if parts.username else getpass.getuser()
        return cls(parts.hostname or "127.0.0.1", port, user, prefix, password)

    @property
    def server(self) -> str:
        """The server as a URL without the password: what messages and the stack's record show."""
        return f"postgresql://{urllib.parse.quote(self.user)}@{self.host}:{self.port}"

    def name(self, service: str) -> str:
        return f"{self.prefix}_{service}"

    def uri(self, service: str) -> str:
        """SQLAlchemy's URL of a service's database, without the password (PGPASSWORD gives it)."""
        return f"{self.server}/{self.name(service)}"

    def password_env(self) -> dict[str, str]:
        """libpq's variable for the password, when there is one (none: trust, or ~/.pgpass)."""
        return {"PGPASSWORD": self.password} if self.password else {}

    def prefect_env(self) -> dict[str, str]:
        """Prefect's server settings for this database (Prefect builds its asyncpg URL from them)."""
        env = {
            "PREFECT_SERVER_DATABASE_DRIVER": "postgresql+asyncpg",
            "PREFECT_SERVER_DATABASE_HOST": self.host,
            "PREFECT_SERVER_DATABASE_PORT": str(self.port),
            "PREFECT_SERVER_DATABASE_USER": self.user,
            "PREFECT_SERVER_DATABASE_NAME": self.name("prefect"),
        }
        return {**env, "PREFECT_SERVER_DATABASE_PASSWORD": self.password} if self.password else env

    def _maintenance(self) -> Any:
        """A connection to the server's `postgres` database, in autocommit (CREATE and DROP DATABASE run outside a
        transaction)."""
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
            connect_timeout=10,
            autocommit=True,
        )

    def ensure(self) -> list[str]:
        """Make each of the stack's databases that is missing; the names of those made. A server that does not answer,
        or refuses the user, is one line naming the server and what to fix."""
        import psycopg
        from psycopg import sql

        try:
            with self._maintenance() as connection:
                have = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
                made = [self.name(s) for s in SERVICES if self.name(s) not in have]
                for name in made:
                    connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                return made
        except psycopg.Error as exc:
            said = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise VidopsError(
                f"PostgreSQL at {self.server}: {said}; check the server, the user, and the password "
                "(in the URL, PGPASSWORD or ~/.pgpass)"
            ) from None

    def drop(self) -> None:
        """Drop the stack's databases (its servers stopped first): what a benchmark made and no longer needs."""
        from psycopg import sql

        with self._maintenance() as connection:
            for service in SERVICES:
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name(service)))
                )


def _without_password(url: str) -> str:
    """`url` with its password, if any, replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
