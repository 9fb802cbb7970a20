"""`postroom contacts import --dry-run` and `postroom contacts export`, as separate processes."""

from __future__ import annotations

import csv
import io
import sqlite3
import stat

from tests.test_cli import CONTACTS, setup  # noqa: F401  (the fixture)


def test_a_dry_run_says_what_would_happen_and_changes_nothing(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    (setup.folder / "contacts.csv").write_text(CONTACTS)
    dry = setup.run("contacts", "import", "contacts.csv", "--list", "customers", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "Would import 4 of 5 rows into list “customers” (4 new, 0 updated)." in dry.stdout
    assert "not-an-address" in dry.stdout and "Dry run: nothing was changed." in dry.stdout
    with sqlite3.connect(setup.db) as conn:
        assert conn.execute("SELECT count(*) FROM contacts").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM contact_lists").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM consent_events").fetchone() == (0,)
    real = setup.run("contacts", "import", "contacts.csv", "--list", "customers")
    assert "Imported 4 of 5 rows" in real.stdout, real.stdout
    with sqlite3.connect(setup.db) as conn:
        assert conn.execute("SELECT count(*) FROM consent_events WHERE kind = 'imported'").fetchone() == (3,)


def test_export_writes_consent_columns_that_import_reads_back(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    (setup.folder / "contacts.csv").write_text(CONTACTS.replace("Tanaka KK", "=HYPERLINK(1)"))
    setup.run("contacts", "import", "contacts.csv", "--list", "customers")
    out = setup.run("contacts", "export", "--list", "customers")
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["email"] for r in rows] == [
        "lena@example.com",
        "raj@example.net",
        "yuki@example.org",
        "nocon@example.com",
    ]
    assert "signup form" in rows[0]["consent_source"] and rows[0]["consent_at"].startswith("2026-03-02T10:15")
    assert rows[0]["list"] == "customers" and rows[0]["suppressed"] == ""
    assert rows[2]["company"] == "'=HYPERLINK(1)"  # a spreadsheet would run it: kept as text
    written = setup.run("contacts", "export", "-o", "all.csv")
    assert "Wrote 4 contacts to all.csv." in written.stderr
    assert stat.S_IMODE((setup.folder / "all.csv").stat().st_mode) == 0o600
    again = setup.run("contacts", "import", "all.csv", "--list", "copy", "--dry-run")
    assert "Would import 4 of 4 rows" in again.stdout, again.stdout
    missing = setup.run("contacts", "export", "--list", "nosuch")
    assert missing.returncode == 1 and "There is no contact list “nosuch”" in missing.stderr


def test_no_configuration_and_an_unwritable_output_each_get_a_true_sentence(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    from tests.test_cli import POSTROOM, clean_env

    bare = subprocess.run(
        [POSTROOM, "contacts", "export"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(),
        timeout=60,
    )
    assert bare.returncode == 1 and "no configuration" in bare.stderr.lower(), bare.stderr
    assert "postroom init" in bare.stderr and "Traceback" not in bare.stderr
    assert not (tmp_path / "postroom.db").exists()  # nothing made in whatever folder it was run from


def test_an_export_to_a_folder_that_does_not_exist_says_so(setup) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    out = setup.run("contacts", "export", "-o", "/nonexistent/x.csv")
    assert out.returncode == 1, out.stderr
    assert "Can't write /nonexistent/x.csv: No such file or directory." in out.stderr, out.stderr
    assert "could not start" not in out.stderr
