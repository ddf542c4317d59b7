"""No password of a storage URL is shown, whatever form it is given in (issue 13, item 2)."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from proxstudy.study.redaction import redact, redact_text, scrub_secrets
from tests.support.cli import PROXSTUDY, cli_env
from tests.support.postgres import PG_URL, needs_pg
from tests.support.study_fixtures import SyntheticSpace, build_study

SECRET = "S3cretPw"

FORMS = [
    (f"postgresql+psycopg://u:{SECRET}@host/db", "postgresql+psycopg://u:***@host/db"),
    (f"postgresql+psycopg://u@host/db?password={SECRET}", "postgresql+psycopg://u@host/db?password=***"),
    (f"postgresql+psycopg://u:p@{SECRET}@host:5432/db", "postgresql+psycopg://u:***@host:5432/db"),
    (f"postgresql+psycopg:///db?host=h&PASSWORD={SECRET}&sslmode=require",
     "postgresql+psycopg:///db?host=h&PASSWORD=***&sslmode=require"),
    (f"postgresql+psycopg://h/db?dsn=host%3Dh%20password%3D{SECRET}%20user%3Du",
     "postgresql+psycopg://h/db?dsn=host%3Dh%20password%3D***%20user%3Du"),
    (f"postgresql+psycopg://h/db?options=host=h+password={SECRET}+user=u",
     "postgresql+psycopg://h/db?options=host=h+password=***+user=u"),
    (f"mysql+pymysql://u:{SECRET}@h/db?sslpassword={SECRET}", "mysql+pymysql://u:***@h/db?sslpassword=***"),
    (f"postgresql+psycopg://u:pa?{SECRET}@host/db?sslmode=require",
     "postgresql+psycopg://u:***@host/db?sslmode=require"),
    (f"postgresql+psycopg://u:pa/{SECRET}@host/db", "postgresql+psycopg://u:***@host/db"),
    (f"postgresql+psycopg://u:a@b?{SECRET}@host/db?application_name=x@y",
     "postgresql+psycopg://u:***@host/db?application_name=x@y"),
    ("postgresql+psycopg://u@host/db?application_name=x@y", "postgresql+psycopg://u@host/db?application_name=x@y"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("sqlite:////tmp/a@b/x.db", "sqlite:////tmp/a@b/x.db"),
]


@pytest.mark.parametrize(("url", "shown"), FORMS)
def test_redact_masks_every_password_form(url, shown):
    assert redact(url) == shown
    assert SECRET not in redact_text(f"storage {url} failed")


def test_scrub_removes_pieces_of_a_password_with_an_unencoded_at():
    url = f"postgresql+psycopg://u:p@{SECRET}@host/db"
    # SQLAlchemy takes "S3cretPw@host" for the host; a driver's message quotes it
    message = f'failed to resolve host "{SECRET}@host" for p@{SECRET}'
    assert SECRET not in scrub_secrets(message, url)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PROXSTUDY, *args], capture_output=True, text=True, env=cli_env(), timeout=120)


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://u@127.0.0.1:1/db?password={SECRET}",
    f"postgresql+psycopg://u:{SECRET}@127.0.0.1:1/db",
    f"postgresql+psycopg://u:p@{SECRET}@127.0.0.1:1/db",
])
def test_error_lines_show_no_password(url):
    result = _run("status", "--storage", url)
    assert result.returncode == 2
    assert SECRET not in result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_pg
def test_report_html_shows_no_query_password(tmp_path):
    from proxstudy.dashboards.report import write_report

    url = f"{PG_URL}?password={SECRET}"  # the test server trusts: the password is not checked
    name = f"redaction-report-{uuid.uuid4().hex[:8]}"
    build_study(url, name, SyntheticSpace(lrs=(0.05, 0.5), seeds=(0,)), n_trials=4)
    out = tmp_path / "r.html"
    write_report(url, name, str(out))
    html = out.read_text()
    assert "password=***" in html and SECRET not in html
