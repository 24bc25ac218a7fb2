"""`callscribe vocabulary set|show|clear`: a tenant's custom vocabulary in the store (local
SQLite, or a deployment's DynamoDB table under moto)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from callscribe.aws.adapters.dynamodb_store import DynamoStore, create_table
from callscribe.cli import main
from callscribe.store.base import TenantVocabulary
from callscribe.store.sqlite import SqliteStore

TABLE = "callscribe-test"


def vocabulary_cli(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any] | None, str]:
    """A vocabulary command: its exit code, the JSON it printed (None if none), its stderr."""
    code = main(["vocabulary", *args])
    out, err = capsys.readouterr()
    printed = json.loads(out) if out.startswith("{") else None
    return code, printed, err


def test_set_show_replace_clear_in_the_local_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ["--data-dir", str(tmp_path)]
    assert vocabulary_cli(capsys, "show", "--tenant", "acme", *local) == (
        1,
        None,
        "error: no vocabulary for tenant acme\n",
    )
    code, printed, err = vocabulary_cli(
        capsys, "set", "--tenant", "acme", "Acme Cloud", " Zorblax ", "ZORBLAX", "Müller", *local
    )
    assert (code, err) == (0, "")
    assert printed is not None
    # As stored: stripped, the repeat but for case dropped, the order kept.
    assert printed["terms"] == ["Acme Cloud", "Zorblax", "Müller"]
    assert printed["characters"] == len("Acme Cloud, Zorblax, Müller")
    assert vocabulary_cli(capsys, "show", "--tenant", "acme", *local) == (0, printed, "")
    # The store a local server reads; another tenant has none.
    store = SqliteStore(tmp_path / "callscribe.sqlite3")
    stored = store.get_tenant_vocabulary("acme")
    assert stored is not None and stored.terms == ("Acme Cloud", "Zorblax", "Müller")
    assert store.get_tenant_vocabulary("globex") is None

    # From a file: one term a line, blank lines and comments skipped; it replaces the whole.
    terms = tmp_path / "terms.txt"
    terms.write_text("# plans\nQuantum Plan\n\n  Nimbus Max  \n# agents\nSiobhán\n", "utf-8")
    code, printed, _ = vocabulary_cli(
        capsys, "set", "--tenant", "acme", "--file", str(terms), *local
    )
    assert code == 0 and printed is not None
    assert printed["terms"] == ["Quantum Plan", "Nimbus Max", "Siobhán"]
    stored = store.get_tenant_vocabulary("acme")
    assert stored is not None and stored.terms == ("Quantum Plan", "Nimbus Max", "Siobhán")

    assert vocabulary_cli(capsys, "clear", "--tenant", "acme", *local) == (
        0,
        None,
        "",
    )
    assert store.get_tenant_vocabulary("acme") is None
    assert vocabulary_cli(capsys, "clear", "--tenant", "acme", *local) == (
        1,
        None,
        "error: no vocabulary for tenant acme\n",
    )
    store.close()


def test_terms_from_standard_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Acme Cloud\nZorblax\n"))
    code, printed, _ = vocabulary_cli(
        capsys, "set", "--tenant", "acme", "--file", "-", "--data-dir", str(tmp_path)
    )
    assert code == 0 and printed is not None and printed["terms"] == ["Acme Cloud", "Zorblax"]


def test_bad_input_is_one_line_naming_it_and_keeps_what_was_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = ["--data-dir", str(tmp_path)]
    assert vocabulary_cli(capsys, "set", "--tenant", "acme", "Acme Cloud", *local)[0] == 0
    bad_file = tmp_path / "bad.txt"
    bad_file.write_text("Acme Cloud\n# a comment\nQuantum\tPlan\n", "utf-8")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Müller\n".encode("latin-1"))
    for args, error in (
        (
            ("--tenant", "acme"),
            "error: give the terms, or --file with one term a line (not both)\n",
        ),
        (
            ("--tenant", "acme", "Acme", "--file", str(bad_file)),
            "error: give the terms, or --file with one term a line (not both)\n",
        ),
        (
            ("--tenant", "acme", "ok", "x" * 51),
            f"error: term 2 ('{'x' * 20}…') is 51 characters; at most 50\n",
        ),
        (
            ("--tenant", "acme", *[f"t{n}" for n in range(51)]),
            "error: 51 different terms; at most 50\n",
        ),
        (
            ("--tenant", "acme", *[f"{n:02d}" + "z" * 48 for n in range(10)]),
            "error: 518 characters (terms joined with ', '); at most 500\n",
        ),
        (
            ("--tenant", "acme corp", "Acme"),
            "error: tenant must be 1-128 letters, digits, '-' or '_' (got 'acme corp')\n",
        ),
        (
            ("--tenant", "acme", "--file", str(bad_file)),
            f"error: {bad_file} line 3 ('Quantum\\tPlan') contains U+0009 (a control "
            "character); only printable characters and spaces are allowed\n",
        ),
        (("--tenant", "acme", "--file", str(latin1)), f"error: {latin1} is not UTF-8 text\n"),
    ):
        assert vocabulary_cli(capsys, "set", *args, *local) == (2, None, error)
    missing = tmp_path / "missing.txt"
    assert vocabulary_cli(capsys, "set", "--tenant", "acme", "--file", str(missing), *local) == (
        1,
        None,
        f"callscribe vocabulary: No such file or directory: {missing}\n",
    )
    # Nothing refused replaced the vocabulary already there.
    code, printed, _ = vocabulary_cli(capsys, "show", "--tenant", "acme", *local)
    assert code == 0 and printed is not None and printed["terms"] == ["Acme Cloud"]


@pytest.fixture
def table(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        create_table(boto3.client("dynamodb"), TABLE)
        yield TABLE


def test_set_show_clear_in_a_deployments_table(
    table: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an operator runs from a laptop against the table every gateway task reads."""
    dynamodb = ["--store", "dynamodb", "--table", table]
    code, printed, _ = vocabulary_cli(
        capsys, "set", "--tenant", "acme", "Acme Cloud", "Zorblax", *dynamodb
    )
    assert code == 0 and printed is not None
    store = DynamoStore(table)
    stored = store.get_tenant_vocabulary("acme")
    assert stored is not None
    assert stored == TenantVocabulary("acme", ("Acme Cloud", "Zorblax"), stored.updated_at)
    # The table may come from the environment instead.
    monkeypatch.setenv("CALLSCRIBE_TABLE_NAME", table)
    assert vocabulary_cli(capsys, "show", "--tenant", "acme", "--store", "dynamodb") == (
        0,
        printed,
        "",
    )
    assert vocabulary_cli(capsys, "clear", "--tenant", "acme", "--store", "dynamodb")[0] == 0
    assert store.get_tenant_vocabulary("acme") is None
    assert vocabulary_cli(capsys, "clear", "--tenant", "acme", *dynamodb)[0] == 1
