"""`postroom demo`: Postroom on its embedded defaults, with a seeded organisation, in a console.

Everything lives in one folder (default `.postroom-demo/`): the SQLite database, the templates,
the demo's generated secrets (`secrets.json`), and the mailbox where the embedded SMTP server keeps
every message it is handed.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from bot.app import App
from bot.config import Settings, load_settings
from bot.contacts.importer import import_contacts
from bot.db.models import Person
from bot.groups import service as groups
from bot.secret_policy import generate_secret

DATA = Path(__file__).parent / "demo_data"
DOMAIN = "corp.example"

HR = f"hannah@{DOMAIN}"
SENDER = f"sam@{DOMAIN}"
APPROVERS = [f"maria@{DOMAIN}", f"omar@{DOMAIN}"]
ADMIN = f"admin@{DOMAIN}"

EMPLOYEES = [
    ("E001", f"alice@{DOMAIN}", "Alice Wong", {"department": "Engineering", "location": "Berlin"}),
    ("E002", f"bob@{DOMAIN}", "Bob Meyer", {"department": "Engineering", "location": "Shanghai"}),
    ("E003", f"chen@{DOMAIN}", "Chen Li", {"department": "Sales", "location": "Shanghai"}),
    ("E004", f"dana@{DOMAIN}", "Dana Cruz", {"department": "Marketing", "location": "Berlin"}),
    ("E005", HR, "Hannah Berg", {"department": "People", "location": "Berlin"}),
    ("E006", SENDER, "Sam Okafor", {"department": "Marketing", "location": "Berlin"}),
    (
        "E007",
        APPROVERS[0],
        "Maria Rossi",
        {"department": "Marketing", "location": "Berlin", "title": "Head of Marketing"},
    ),
    ("E008", APPROVERS[1], "Omar Haddad", {"department": "Legal", "location": "Berlin"}),
]


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


@dataclass
class DemoPlan:
    folder: Path
    settings: Settings
    fresh: bool


def prepare(
    folder: str | Path = ".postroom-demo",
    *,
    fresh: bool = False,
    web_port: int | None = None,
    smtp_port: int | None = None,
) -> DemoPlan:
    base = Path(folder).resolve()
    if fresh and base.exists():
        shutil.rmtree(base)
    is_new = not (base / "postroom.db").exists()
    base.mkdir(parents=True, exist_ok=True)
    templates = base / "templates"
    if not templates.exists():
        shutil.copytree(DATA / "templates", templates)
    if not (base / "contacts.csv").exists():
        shutil.copy(DATA / "contacts.csv", base / "contacts.csv")
    if not (base / "groups.yaml").exists():
        shutil.copy(DATA / "groups.yaml", base / "groups.yaml")
    secrets = demo_secrets(base)
    smtp = smtp_port if smtp_port is not None else free_port(2525)
    web = web_port if web_port is not None else free_port(8080)
    settings = load_settings(
        read_file=False,
        read_env=False,  # the demo is self-contained: no postroom.toml, no POSTROOM_* variables
        database={"url": f"sqlite+aiosqlite:///{base / 'postroom.db'}"},
        smtp={"host": "127.0.0.1", "port": smtp, "connections": 2},
        relay={"enabled": True, "host": "127.0.0.1", "port": smtp, "mailbox_dir": str(base / "mailbox")},
        org={"name": "Example Corp", "domains": [DOMAIN], "postal_address": "1 Example Street, 10115 Berlin"},
        roles={"hr": [HR], "senders": [SENDER], "approvers": APPROVERS, "admins": [ADMIN]},
        web={
            "host": "127.0.0.1",
            "port": web,
            "base_url": f"http://127.0.0.1:{web}",
            "secret": secrets["web_secret"],
        },
        # The sender (news@, unsubscribe@, the bounce domain) follows [org], as in a real install.
        campaigns={"templates_dir": str(templates), "reports_dir": str(base / "reports")},
        groups={"rules_file": str(base / "groups.yaml")},
        hr={"webhook_secret": secrets["hr_webhook_secret"]},
    )
    return DemoPlan(base, settings, is_new)


SECRETS_FILE = "secrets.json"
SECRET_KEYS = ("web_secret", "hr_webhook_secret")


def demo_secrets(folder: Path) -> dict[str, str]:
    """The demo's own secrets: generated the first time (mode 0600 in its folder), then reused, so links
    in its mailbox keep working when it resumes; --fresh removes the folder and with it the secrets."""
    path = folder / SECRETS_FILE
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(found, dict) and all(isinstance(found.get(k), str) and found[k] for k in SECRET_KEYS):
            return {k: found[k] for k in SECRET_KEYS}
    except (OSError, ValueError):
        pass  # absent or unreadable: make new ones
    made = {k: generate_secret() for k in SECRET_KEYS}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(made, f)
    os.chmod(path, 0o600)
    return made


async def seed(app: App, folder: Path) -> None:
    """The demo organisation: people, two groups, a contact list with consent records."""
    ctx = app.ctx
    async with ctx.sessions() as session, session.begin():
        if (await session.execute(select(Person.id).limit(1))).first():
            return
        for emp_id, email, name, attrs in EMPLOYEES:
            session.add(Person(employee_id=emp_id, email=email, name=name, attributes=attrs, source="demo"))
        await session.flush()
        everyone = [e[1] for e in EMPLOYEES]
        engineers = [e[1] for e in EMPLOYEES if e[3]["department"] == "Engineering"]
        for address, display, members in (
            ("all-staff", "Everyone at Example Corp", everyone),
            ("eng", "Engineering", engineers),
        ):
            group = await groups.create_group(
                session,
                ctx.settings,
                address=address,
                display_name=display,
                actor="demo",
                via="demo",
                owners=[HR],
            )
            plan = await groups.plan_add(session, group, members, source="manual", reason="demo seed")
            await app.memberships.execute(  # the one membership path, as /addgroup takes
                plan, kind="command", source="demo", actor="demo", via="demo", session=session, whole=True
            )
    await import_contacts(ctx, folder / "contacts.csv", "customers", actor="demo")
    await app.signups.open_list("customers", SIGNUP_WORDING, actor="demo", via="demo")


SIGNUP_WORDING = "Yes, send me Example Corp's news by email. I can leave at any time with one click."


GUIDE = """\
People: {hr} (HR), {sender} (campaign sender), {a1} and {a2} (approvers), {admin} (admin).
You are {hr}. Try, in order:
  /groups
  /addgroup eng chen@corp.example
  /addgroup eng someone@gmail.com          ← refused: eng@ is internal
  /members eng
  /rules                                   ← group rules (groups.yaml in the demo folder)
  /sync --dry-run                          ← what following the rules would change; /sync applies it
  /as {sender}
  /campaign new spring --to customers --template welcome --subject "Spring news for {{{{ first_name }}}}"
  /campaign preview spring
  /campaign submit spring                  ← the approvers get a card
  /approve spring                          ← refused: senders can't approve
  /as {a1}
  /approve spring                          ← sent; watch the mailbox lines
  /campaign report spring                  ← figures, rates, a chart (PNG) under the demo folder, a report page
  /as {sender}
  /automation new welcome --on confirmed:customers --template welcome
  /automation submit welcome               ← approved like a campaign: /as {a1}, /approve automation:welcome
  then sign up at {base}/s/customers, confirm from the mailbox, and open the welcome's unsubscribe link
  /contacts show <the address>             ← the consent record, step by step
  /help   ·   /as <email>   ·   /quit
"""


def guide(base_url: str = "http://127.0.0.1:8080") -> str:
    return GUIDE.format(hr=HR, sender=SENDER, a1=APPROVERS[0], a2=APPROVERS[1], admin=ADMIN, base=base_url)
