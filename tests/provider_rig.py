"""Real parts for the group providers' tests: the fakes of Google's, Microsoft's and WeCom's APIs on
loopback (a TLS one for msal, which talks only https), and a real OpenLDAP `slapd` and a real
Mailman 3 core, started once per test session in a temporary directory on free loopback ports
(skipped, with one sentence naming the package, when they are not installed)."""

from __future__ import annotations

import asyncio
import atexit
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.fake_google import FakeGoogle
from tests.fake_graph import FakeGraph
from tests.fake_wecom_mail import FakeWeComMail
from tests.loopback import serve, wait_until
from tests.smtp import free_port

SLAPD = shutil.which("slapd") or ("/usr/sbin/slapd" if os.path.exists("/usr/sbin/slapd") else None)
MAILMAN = shutil.which("mailman")
LDAP_BASE = "dc=corp,dc=example"
LDAP_ADMIN = f"cn=admin,{LDAP_BASE}"
LDAP_PASSWORD = "ldap-secret"
MAILMAN_USER, MAILMAN_PASSWORD = "restadmin", "rest-secret"


# -- keys and certificates ------------------------------------------------------------------------
def rsa_key() -> tuple[bytes, bytes]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def loopback_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (its own CA), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "loopback.crt", folder / "loopback.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@asynccontextmanager
async def serve_tls(app: Any, cert: Path, key: Path) -> AsyncIterator[str]:
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="off",
        access_log=False,
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), 10)
        if task.done():
            task.result()
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        server.force_exit = True
        try:
            await asyncio.wait_for(task, 5)
        except (TimeoutError, asyncio.CancelledError):
            task.cancel()


# -- the fakes, with the settings that point Postroom at them ---------------------------------------
@dataclass
class Running:
    fake: Any
    settings: dict[str, Any]  # the [providers.<name>] section


@asynccontextmanager
async def google_platform(folder: Path) -> AsyncIterator[Running]:
    private, public = rsa_key()
    fake = FakeGoogle(public_key_pem=public)
    async with serve(fake.app()) as base:
        fake.base = base
        key_file = folder / "google-service-account.json"
        key_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "postroom-test",
                    "private_key_id": "key-1",
                    "private_key": private.decode(),
                    "client_email": "postroom@postroom-test.iam.gserviceaccount.com",
                    "client_id": "1234567890",
                    "token_uri": f"{base}/token",
                }
            )
        )
        yield Running(
            fake,
            {
                "service_account_file": str(key_file),
                "delegated_admin": fake.admin,
                "api_url": base,
                "settings_api_url": f"{base}/groups/v1",
            },
        )


@asynccontextmanager
async def graph_platform(folder: Path) -> AsyncIterator[Running]:
    fake = FakeGraph()
    cert, key = loopback_certificate(folder)
    async with serve(fake.app()) as base, serve_tls(fake.app(), cert, key) as login:
        fake.base, fake.login = base, login
        yield Running(
            fake,
            {
                "tenant_id": "tenant-1",
                "client_id": fake.client_id,
                "client_secret": fake.client_secret,
                "authority_url": login,
                "graph_url": base,
                "ca_file": str(cert),
            },
        )


@asynccontextmanager
async def wecom_platform(folder: Path) -> AsyncIterator[Running]:
    fake = FakeWeComMail()
    async with serve(fake.app()) as base:
        yield Running(fake, {"corp_id": "ww-corp", "secret": fake.secret, "api_url": base})


# -- slapd ----------------------------------------------------------------------------------------
@dataclass
class Slapd:
    url: str
    folder: Path

    def ldif(self, text: str) -> None:
        subprocess.run(
            ["ldapadd", "-x", "-H", self.url, "-D", LDAP_ADMIN, "-w", LDAP_PASSWORD],
            input=text.encode(),
            check=True,
            capture_output=True,
        )

    def modify(self, text: str) -> None:
        subprocess.run(
            ["ldapmodify", "-x", "-H", self.url, "-D", LDAP_ADMIN, "-w", LDAP_PASSWORD],
            input=text.encode(),
            check=True,
            capture_output=True,
        )

    def search(self, base: str, flt: str, *attrs: str) -> str:
        out = subprocess.run(
            ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url, "-b", base, flt, *attrs],
            check=True,
            capture_output=True,
        )
        return out.stdout.decode()

    def settings(
        self, schema: str = "groupOfNames", group_base: str = f"ou=groups,{LDAP_BASE}"
    ) -> dict[str, Any]:
        return {
            "url": self.url,
            "bind_dn": LDAP_ADMIN,
            "password": LDAP_PASSWORD,
            "group_base": group_base,
            "people_base": f"ou=people,{LDAP_BASE}",
            "schema": schema,
        }


SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
include /etc/ldap/schema/misc.schema
pidfile {folder}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
suffix "{base}"
rootdn "{admin}"
rootpw {password}
directory {folder}/data
maxsize 104857600
index objectClass eq
index mail eq
"""


@contextmanager
def running_slapd() -> Iterator[Slapd]:
    """A slapd of our own in a temporary directory on a free loopback port, stopped afterwards."""
    assert SLAPD is not None
    folder = Path(tempfile.mkdtemp(prefix="postroom-slapd-"))
    (folder / "data").mkdir()
    (folder / "slapd.conf").write_text(
        SLAPD_CONF.format(folder=folder, base=LDAP_BASE, admin=LDAP_ADMIN, password=LDAP_PASSWORD)
    )
    port = free_port()
    url = f"ldap://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [SLAPD, "-f", str(folder / "slapd.conf"), "-h", url + "/", "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(
                ["ldapsearch", "-x", "-H", url, "-b", "", "-s", "base"], capture_output=True
            )
            if probe.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"slapd did not start: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            time.sleep(0.1)
        server = Slapd(url, folder)
        server.ldif(
            f"dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Example Corp\ndc: corp\n\n"
            f"dn: ou=people,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: people\n\n"
            f"dn: ou=groups,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: groups\n\n"
            f"dn: ou=lists,{LDAP_BASE}\nobjectClass: organizationalUnit\nou: lists\n"
        )
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


# One slapd and one Mailman per test process, whichever test modules ask for them (a session fixture
# imported into two modules would be two fixtures, and start two servers); stopped when it exits.
_SHARED: dict[str, Any] = {}
_STACK = ExitStack()
atexit.register(_STACK.close)


@pytest.fixture(scope="session")
def slapd() -> Slapd:
    if SLAPD is None or shutil.which("ldapadd") is None:
        pytest.skip("OpenLDAP is not installed: apt-get install slapd ldap-utils")
    if "slapd" not in _SHARED:
        _SHARED["slapd"] = _STACK.enter_context(running_slapd())
    server: Slapd = _SHARED["slapd"]
    return server


# -- Mailman 3 ------------------------------------------------------------------------------------
@dataclass
class Mailman:
    api_url: str
    config: Path

    def settings(self) -> dict[str, Any]:
        return {"api_url": self.api_url, "user": MAILMAN_USER, "password": MAILMAN_PASSWORD}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, auth=(MAILMAN_USER, MAILMAN_PASSWORD), timeout=30)


MAILMAN_CFG = """\
[mailman]
site_owner: postmaster@corp.example
layout: postroom

[paths.postroom]
var_dir: {folder}/var
bin_dir: {bin_dir}
log_dir: {folder}/logs
lock_file: {folder}/var/master.lck
pid_file: {folder}/var/master.pid

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///$DATA_DIR/mailman.db

[webservice]
hostname: 127.0.0.1
port: {port}
api_version: 3.1
admin_user: {user}
admin_pass: {password}

[mta]
incoming: mailman.mta.null.NullMTA
outgoing: mailman.mta.deliver.deliver
lmtp_host: 127.0.0.1
lmtp_port: {lmtp}
smtp_host: 127.0.0.1
smtp_port: {smtp}

[archiver.prototype]
enable: no
"""
# Only the REST runner: the tests need the API, and every other runner costs start-up time.
MAILMAN_RUNNERS = (
    "archive",
    "bad",
    "bounces",
    "command",
    "digest",
    "in",
    "lmtp",
    "nntp",
    "out",
    "pipeline",
    "retry",
    "shunt",
    "virgin",
    "task",
)


@pytest.fixture(scope="session")
def mailman() -> Mailman:
    if MAILMAN is None:
        pytest.skip("Mailman 3 is not installed: apt-get install mailman3")
    if "mailman" not in _SHARED:
        _SHARED["mailman"] = _STACK.enter_context(running_mailman())
    server: Mailman = _SHARED["mailman"]
    return server


@contextmanager
def running_mailman() -> Iterator[Mailman]:
    """A Mailman 3 core of our own in a temporary directory (its REST API on a free loopback port)."""
    assert MAILMAN is not None
    folder = Path(tempfile.mkdtemp(prefix="postroom-mailman-"))
    port = free_port()
    cfg = folder / "mailman.cfg"
    cfg.write_text(
        "".join(f"[runner.{name}]\nstart: no\n\n" for name in MAILMAN_RUNNERS)
        + MAILMAN_CFG.format(
            folder=folder,
            bin_dir="/usr/lib/mailman3/bin"
            if os.path.isdir("/usr/lib/mailman3/bin")
            else os.path.dirname(MAILMAN),
            port=port,
            user=MAILMAN_USER,
            password=MAILMAN_PASSWORD,
            lmtp=free_port(),
            smtp=free_port(),
        )
    )
    env = {**os.environ, "MAILMAN_CONFIG_FILE": str(cfg)}
    root = ["--run-as-root"] if os.geteuid() == 0 else []  # CI runs as root
    # The master it starts keeps its standard streams: a file, not a pipe that would never close.
    with open(folder / "start.log", "wb") as log:
        started = subprocess.run(
            [MAILMAN, *root, "-C", str(cfg), "start"], stdout=log, stderr=subprocess.STDOUT, env=env
        )
    if started.returncode != 0:
        raise RuntimeError(f"mailman start failed: {(folder / 'start.log').read_text()[-2000:]}")
    api = f"http://127.0.0.1:{port}/3.1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.get(
                        f"{api}/system/versions", auth=(MAILMAN_USER, MAILMAN_PASSWORD), timeout=2
                    ).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                logs = (
                    "".join(p.read_text()[-2000:] for p in (folder / "logs").glob("*.log"))
                    if (folder / "logs").exists()
                    else ""
                )
                raise RuntimeError(f"Mailman's REST API did not come up: {logs}")
            time.sleep(0.3)
        with httpx.Client(base_url=api, auth=(MAILMAN_USER, MAILMAN_PASSWORD)) as c:
            c.post("/domains", json={"mail_host": "corp.example"}).raise_for_status()
        yield Mailman(api, cfg)
    finally:
        subprocess.run(
            [MAILMAN, *root, "-C", str(cfg), "stop"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        pid_file = folder / "var" / "master.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(folder, ignore_errors=True)
