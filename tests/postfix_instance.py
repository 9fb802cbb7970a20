"""A private Postfix instance for tests and benchmarks: its own config and queue directories, smtpd on a
loopback port, everything relayed to a local sink, group addresses expanded by a lookup table.

Needs Debian's `postfix`, `postfix-sqlite` and `postfix-pgsql` (.ci/run installs them) and root (Postfix's
daemons drop to the `postfix` user, so the instance lives in a directory that user can read).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
PACKAGES = "postfix postfix-sqlite postfix-pgsql"
QUERY = (
    "SELECT m.email FROM memberships m JOIN groups g ON g.id = m.group_id WHERE g.address = '%s' "
    "AND m.email NOT IN (SELECT address FROM groups)"
)


def missing() -> str | None:
    """Why a real Postfix can't run here (None: it can)."""
    if not os.path.exists(POSTFIX):
        return f"Postfix is not installed (apt-get install {PACKAGES}; .ci/run does it)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root"
    # Against an empty main.cf of our own: `postconf -m` fails without /etc/postfix/main.cf, which Debian's
    # package leaves out when installed with "No configuration" (as .ci/run does).
    with tempfile.TemporaryDirectory() as etc:
        (Path(etc) / "main.cf").write_text("")
        maps = subprocess.run(
            ["/usr/sbin/postconf", "-c", etc, "-m"], capture_output=True, text=True
        ).stdout.split()
    lacking = [m for m in ("sqlite", "pgsql") if m not in maps]
    if lacking:
        return f"Postfix lacks the {', '.join(lacking)} map type (apt-get install {PACKAGES})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shared_dir(prefix: str) -> Path:
    """A directory the postfix user can read and write (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o777)
    return path


def lookup_table(folder: Path, database_url: str) -> str:
    """A Postfix lookup table over Postroom's database (the manifests' query), as `type:path`."""
    if database_url.startswith("sqlite"):
        dbpath = database_url.split(":///", 1)[1]
        cf = folder / "groups-sqlite.cf"
        cf.write_text(f"dbpath = {dbpath}\nquery = {QUERY}\n")
        return f"sqlite:{cf}"
    rest = database_url.split("://", 1)[1]
    creds, _, hostpart = rest.rpartition("@")
    user = creds.split(":", 1)[0] or "postgres"
    host, _, dbname = hostpart.partition("/")
    cf = folder / "groups-pgsql.cf"
    cf.write_text(f"hosts = {host.split(':')[0]}\nuser = {user}\ndbname = {dbname}\nquery = {QUERY}\n")
    return f"pgsql:{cf}"


MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixInstance:
    def __init__(self, folder: Path, *, sink_port: int, alias_maps: str, policy_port: int | None = None):
        self.folder = folder
        self.etc = folder / "etc"
        self.port = free_port()
        self.sink_port = sink_port
        self.alias_maps = alias_maps
        self.policy_port = policy_port

    def main_cf(self) -> str:
        policy = ""
        if self.policy_port is not None:
            # the restrictions manifests/postfix/main.cf.snippet gives
            service = f"check_policy_service {{ inet:127.0.0.1:{self.policy_port}, timeout=10s, default_action=DUNNO }}"
            policy = (
                f"smtpd_recipient_restrictions = {service}, permit_mynetworks, reject_unauth_destination\n"
                f"smtpd_end_of_data_restrictions = {service}\n"
            )
        f = self.folder
        return f"""\
compatibility_level = 3.6
queue_directory = {f}/queue
data_directory = {f}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix-test.corp.example
mydomain = corp.example
myorigin = $myhostname
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relay_domains = corp.example
relayhost = [127.0.0.1]:{self.sink_port}
smtp_dns_support_level = disabled
virtual_alias_maps = {self.alias_maps}
virtual_alias_expansion_limit = 20000
recipient_delimiter = +
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
{policy}maillog_file = {f}/postfix.log
maillog_file_prefixes = {f}
smtputf8_enable = no
biff = no
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 5s
default_destination_concurrency_limit = 20
initial_destination_concurrency = 20
smtp_destination_recipient_limit = 500
"""

    def start(self) -> PostfixInstance:
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.folder / "queue").mkdir(exist_ok=True)
        data = self.folder / "data"
        data.mkdir(exist_ok=True)
        shutil.chown(data, "postfix", "postfix")
        (self.etc / "main.cf").write_text(self.main_cf())
        (self.etc / "master.cf").write_text(MASTER.format(port=self.port))
        self._postfix("start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"Postfix did not start: {self.log()[-2000:]}")

    def _postfix(self, *args: str) -> None:
        done = subprocess.run(
            [POSTFIX, "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {done.stderr.strip()[:2000]}")

    def stop(self) -> None:
        try:
            self._postfix("stop")
        except Exception:  # already stopped
            pass

    def log(self) -> str:
        path = self.folder / "postfix.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def hold_queue(self) -> list[str]:
        hold = self.folder / "queue" / "hold"
        return sorted(p.name for p in hold.iterdir()) if hold.exists() else []

    def __enter__(self) -> PostfixInstance:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
