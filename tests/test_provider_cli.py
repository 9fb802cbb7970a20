"""`postroom groups import --from <provider> [--dry-run]` and `postroom providers check`, as separate
processes, against the fake Google Workspace on loopback."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path

from tests.provider_rig import google_platform, graph_platform

POSTROOM = str(Path(sys.executable).parent / "postroom")


def toml_value(value: object) -> str:
    return json.dumps(value)


def write_config(folder: Path, google: dict[str, str]) -> Path:
    lines = [
        "[database]",
        f"url = {toml_value('sqlite+aiosqlite:///' + str(folder / 'postroom.db'))}",
        "[org]",
        'domains = ["corp.example"]',
        "[providers.google]",
        *(f"{k} = {toml_value(v)}" for k, v in google.items()),
    ]
    path = folder / "postroom.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def postroom(config: Path, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        POSTROOM,
        "--config",
        str(config),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=config.parent,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_import_from_google_then_check(tmp_path: Path) -> None:
    async with google_platform(tmp_path) as g:
        g.fake.add_group("eng@corp.example", {"ann@corp.example": "owner", "bob@corp.example": "member"})
        g.fake.add_group("partners@corp.example", {"x@partner.example": "member"}, external=True)
        g.fake.add_group("elsewhere@other.example", {"ann@corp.example": "member"})
        config = write_config(tmp_path, g.settings)

        code, out = await postroom(config, "groups", "import", "--from", "google", "--dry-run")
        assert code == 0, out
        assert "Would import from google: 2 new groups" in out and "elsewhere@other.example" in out
        with sqlite3.connect(tmp_path / "postroom.db") as db:
            assert db.execute("SELECT count(*) FROM groups").fetchone() == (0,)

        code, out = await postroom(config, "groups", "import", "--from", "google")
        assert code == 0, out
        with sqlite3.connect(tmp_path / "postroom.db") as db:
            groups = dict(db.execute("SELECT address, kind || ':' || provider FROM groups"))
            members = set(
                db.execute(
                    "SELECT g.address, m.email, m.role, m.source, m.state FROM memberships m "
                    "JOIN groups g ON g.id = m.group_id"
                )
            )
        assert groups == {
            "eng@corp.example": "internal:google",
            "partners@corp.example": "external-allowed:google",
        }
        assert members == {
            ("eng@corp.example", "ann@corp.example", "owner", "import", "active"),
            ("eng@corp.example", "bob@corp.example", "member", "import", "active"),
            ("partners@corp.example", "x@partner.example", "member", "import", "active"),
        }
        assert g.fake.members_of("eng@corp.example") == {
            "ann@corp.example": "owner",
            "bob@corp.example": "member",
        }

        code, out = await postroom(config, "providers", "check")
        assert code == 0, out
        assert "google: works — reads groups as admin@corp.example" in out
        assert "microsoft: not configured" in out

        g.fake.admin = "someone-else@corp.example"  # delegation no longer matches
        code, out = await postroom(config, "providers", "check")
        assert (
            code == 1 and "google: does not work — Google refused the service account's token request" in out
        )
        assert "Traceback" not in out


async def test_a_default_provider_that_is_not_set_up_stops_with_one_sentence(tmp_path: Path) -> None:
    config = tmp_path / "postroom.toml"
    config.write_text(
        f"[database]\nurl = {toml_value('sqlite+aiosqlite:///' + str(tmp_path / 'p.db'))}\n"
        '[groups]\nprovider = "microsoft"\n'
    )
    code, out = await postroom(config, "providers", "check")
    assert code == 1 and "groups.provider is microsoft, but [providers.microsoft] is not filled in" in out, (
        out
    )
    assert "Traceback" not in out


async def test_import_names_every_group_it_makes_external_allowed(tmp_path: Path) -> None:
    """allowExternalMembers alone does not open a group: only a group whose platform allows external
    members and that has some becomes external-allowed, named in the dry run and in the real run."""
    async with google_platform(tmp_path) as g:
        g.fake.add_group("eng@corp.example", {"ann@corp.example": "owner", "bob@corp.example": "member"})
        g.fake.add_group("partners@corp.example", {"x@partner.example": "member"}, external=True)
        g.fake.add_group("open@corp.example", {"carol@corp.example": "member"}, external=True)
        config = write_config(tmp_path, g.settings)

        code, out = await postroom(config, "groups", "import", "--from", "google", "--dry-run")
        assert code == 0 and "Traceback" not in out, out
        assert "Would import from google: 3 new groups, 0 known already, 4 memberships" in out, out
        assert "partners@corp.example would become external-allowed: Google Workspace allows" in out, out
        assert "open@corp.example stays internal" in out and "kind: external-allowed" in out, out
        with sqlite3.connect(tmp_path / "postroom.db") as db:
            assert db.execute("SELECT count(*) FROM groups").fetchone() == (0,)

        code, out = await postroom(config, "groups", "import", "--from", "google")
        assert code == 0 and "Traceback" not in out, out
        assert "partners@corp.example is now external-allowed" in out, out
        assert "open@corp.example stays internal" in out, out
        with sqlite3.connect(tmp_path / "postroom.db") as db:
            kinds = dict(db.execute("SELECT address, kind FROM groups"))
        assert kinds == {
            "eng@corp.example": "internal",
            "partners@corp.example": "external-allowed",
            "open@corp.example": "internal",
        }


async def test_import_goes_on_past_a_group_deleted_meanwhile_and_counts_what_the_guard_let_in(
    tmp_path: Path,
) -> None:
    """A group deleted on the platform while the import runs (404) is named and the others are
    imported; the memberships counted leave out those the guard refused."""
    async with google_platform(tmp_path) as g:
        g.fake.add_group("eng@corp.example", {"ann@corp.example": "owner", "bob@corp.example": "member"})
        g.fake.add_group("closed@corp.example", {"dan@corp.example": "member", "y@partner.example": "member"})
        g.fake.vanished.add("gone@corp.example")
        config = write_config(tmp_path, g.settings)

        for args, verb in ((("--dry-run",), "Would import"), ((), "Imported")):
            code, out = await postroom(config, "groups", "import", "--from", "google", *args)
            assert code == 0 and "Traceback" not in out, out
            assert f"{verb} from google: 2 new groups, 0 known already, 3 memberships" in out, out
            assert "skipped gone@corp.example: gone@corp.example is not a group in Google Workspace" in out, (
                out
            )
            assert "closed@corp.example stays internal" in out, out
            assert "refused y@partner.example in closed@corp.example" in out, out
        with sqlite3.connect(tmp_path / "postroom.db") as db:
            members = set(
                db.execute("SELECT g.address, m.email FROM memberships m JOIN groups g ON g.id = m.group_id")
            )
        assert members == {
            ("eng@corp.example", "ann@corp.example"),
            ("eng@corp.example", "bob@corp.example"),
            ("closed@corp.example", "dan@corp.example"),
        }


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_or_plain_http_microsoft_endpoint_is_one_sentence_and_the_others_are_checked(
    tmp_path: Path,
) -> None:
    nowhere = f"127.0.0.1:{closed_port()}"
    cases = {
        "authority over http": (
            {"authority_url": f"http://{nowhere}", "graph_url": f"http://{nowhere}"},
            "providers.microsoft.authority_url",
            "https://",
        ),
        "authority unreachable": (
            {"authority_url": f"https://{nowhere}", "graph_url": f"http://{nowhere}"},
            "providers.microsoft.authority_url",
            "did not answer",
        ),
    }
    async with google_platform(tmp_path) as g:
        for case, (urls, setting, cause) in cases.items():
            config = write_config(tmp_path, g.settings)
            microsoft = {"tenant_id": "tenant-1", "client_id": "app", "client_secret": "s3cret", **urls}
            config.write_text(
                config.read_text()
                + "[providers.microsoft]\n"
                + "".join(f"{k} = {toml_value(v)}\n" for k, v in microsoft.items())
            )
            code, out = await postroom(config, "providers", "check")
            assert code == 1 and "Traceback" not in out, (case, out)
            assert "google: works" in out, (case, out)
            line = next(x for x in out.splitlines() if x.startswith("microsoft:"))
            assert line.startswith("microsoft: does not work — ") and setting in line and cause in line, (
                case,
                out,
            )
            assert "s3cret" not in out

            code, out = await postroom(config, "groups", "import", "--from", "microsoft", "--dry-run")
            assert code == 1 and "Traceback" not in out, (case, out)
            assert setting in out and cause in out and len(out.strip().splitlines()) == 1, (case, out)


async def test_an_unreachable_graph_is_named_by_its_setting(tmp_path: Path) -> None:
    async with google_platform(tmp_path) as g, graph_platform(tmp_path) as m:
        config = write_config(tmp_path, g.settings)
        microsoft = {**m.settings, "graph_url": f"http://127.0.0.1:{closed_port()}"}
        config.write_text(
            config.read_text()
            + "[providers.microsoft]\n"
            + "".join(f"{k} = {toml_value(v)}\n" for k, v in microsoft.items())
        )
        code, out = await postroom(config, "providers", "check")
        assert code == 1 and "Traceback" not in out and "google: works" in out, out
        assert (
            "microsoft: does not work — Microsoft Graph did not answer at providers.microsoft.graph_url"
            in out
        ), out


async def test_import_from_an_unknown_provider_or_from_local_says_which_providers_there_are(
    tmp_path: Path,
) -> None:
    async with google_platform(tmp_path) as g:
        config = write_config(tmp_path, g.settings)
        code, out = await postroom(config, "groups", "import", "--from", "nosuch", "--dry-run")
        assert code == 1 and "Traceback" not in out, out
        assert "There is no provider called nosuch" in out, out
        assert "google, microsoft, wecom, ldap, mailman" in out and "[providers.nosuch]" not in out, out
        assert "configured here: google" in out, out

        code, out = await postroom(config, "groups", "import", "--from", "local")
        assert code == 1 and "Traceback" not in out, out
        assert "local is Postroom's own database" in out and "not configured" not in out, out
        assert "google, microsoft, wecom, ldap, mailman" in out, out


async def test_an_ldap_url_that_is_not_ldap_is_refused_at_start_naming_its_key(tmp_path: Path) -> None:
    """ldap3 read `http://ldap.corp.example` as a host with a bad port and `providers check` said only
    "did not answer (LDAPInvalidPortError)": the scheme is the admin's mistake, said at start."""
    config = tmp_path / "postroom.toml"
    for url, refused in (("http://ldap.corp.example", True), ("ldaps://ldap.corp.example", False)):
        config.write_text(
            f"[database]\nurl = {toml_value('sqlite+aiosqlite:///' + str(tmp_path / 'p.db'))}\n"
            f'[org]\ndomains = ["corp.example"]\n[providers.ldap]\nurl = {toml_value(url)}\n'
        )
        code, out = await postroom(config, "providers", "check")
        assert "Traceback" not in out, out
        if refused:
            assert code != 0 and "providers.ldap.url" in out and "ldap://" in out, out
            assert "LDAPInvalidPortError" not in out, out
        else:
            assert "providers.ldap.url" not in out and "ldap:" in out, out


async def test_import_skips_a_platform_group_on_postrooms_own_or_a_role_address_saying_why(
    tmp_path: Path,
) -> None:
    """Attacker tryout: a group may not take postmaster@ (RFC 2142) or the campaigns' From address, so an
    import of one from the platform skips it, naming the reason, and imports the rest."""
    async with google_platform(tmp_path) as g:
        g.fake.add_group("eng@corp.example", {"ann@corp.example": "member"})
        g.fake.add_group("postmaster@corp.example", {"ann@corp.example": "member"})
        g.fake.add_group("news@corp.example", {"bob@corp.example": "member"})
        config = write_config(tmp_path, g.settings)
        code, out = await postroom(config, "groups", "import", "--from", "google")
        assert code == 0 and "Traceback" not in out, out
        assert "postmaster@corp.example: postmaster@corp.example is a role mailbox" in out, out
        assert "news@corp.example: news@corp.example is the campaigns' From address" in out, out
        with sqlite3.connect(tmp_path / "postroom.db") as db:
            assert [r for (r,) in db.execute("SELECT address FROM groups")] == ["eng@corp.example"]
