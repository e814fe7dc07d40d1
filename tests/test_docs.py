"""The README and docs/ say what the code does: every `keygen ...` command line they show is
accepted by the real argument parser, every metric they name is in the exposition, and every
runbook link and link between pages leads to a page and a heading that exist."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keygen.api import create_app
from keygen.cli import build_parser
from keygen.config import Settings
from keygen.ledgers.postgres_migrations import MIGRATIONS, VERSION_TABLE
from tests.support.app import running
from tests.support.markdown import (
    DOC_FILES,
    ROOT,
    Command,
    anchors,
    argument_lists,
    commands,
    relative_links,
)
from tests.support.processes import free_port

#: What a synopsis' placeholders stand for when the line is parsed.
PLACEHOLDERS = {
    "DIR": "/tmp/keygen-docs",
    "FILE": "acks.jsonl",
    "PATH": "bench.json",
    "ID": "4f1c9a2b7d30",
    "N": "2",
    "S": "10",
    "R": "100",
    "MS": "1000",
    "R,R,...": "100,200",
    "NS": "orders",
    "NAME": "ci",
    "SCOPE": "read",
    "TOKEN": "kg_docs",
    "URL": "http://127.0.0.1:8010",
    "URL1": "http://127.0.0.1:8010",
    "URL2": "http://127.0.0.1:8011",
    "http://HOST:PORT": "http://127.0.0.1:8010",
}
#: What `...` stands for after an option (`--faults ...`).
OPTION_VALUES = {"--faults": "all", "--scope": "read", "--url": "http://127.0.0.1:8010"}
#: Errors of a command named in prose without all it needs (`keygen keys revoke`, `keygen
#: allocate --api-key`): allowed in inline code, once every name in it is known.
INCOMPLETE = ("the following arguments are required", "expected one argument")

#: keygen_* words of the docs that are not metrics: the ledger's tables and indexes, and the
#: least-privileged role of docs/ledger.md.
SCHEMA_NAMES = {
    name
    for sql in [VERSION_TABLE, *(m.sql for m in MIGRATIONS)]
    for name in re.findall(r"CREATE (?:TABLE|INDEX)(?: IF NOT EXISTS)? (keygen_\w+)", sql)
}
NOT_METRICS = SCHEMA_NAMES | {"keygen_app"}
METRIC_WORD = re.compile(r"\bkeygen_[a-z0-9_]+\b")

ALERT_FILES = (
    ROOT / "deploy" / "prometheus" / "alerts.yml",
    ROOT / "deploy" / "prometheus" / "alerts-test.yml",
    ROOT / "deploy" / "kubernetes" / "components" / "monitoring" / "prometheusrule.yaml",
)


def _page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


# -- (i) command lines ------------------------------------------------------------------------


def _substituted(argv: list[str]) -> list[str]:
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "...":
            token = OPTION_VALUES[argv[i - 1]]
        out.append(PLACEHOLDERS.get(token, token))
    return out


def _strict_parser() -> argparse.ArgumentParser:
    """keygen's parser, with no abbreviation of an option taken for the option: a page that
    says `--key` where the option is `--keys` is wrong even if argparse would guess."""
    parser = build_parser()
    pending = [parser]
    while pending:
        current = pending.pop()
        current.allow_abbrev = False
        pending.extend(_subcommands(current).values())
    return parser


def _parse_error(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """argparse's complaint about ``argv``, or None when it parses (or asks for --version)."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0:
            return None
        return stderr.getvalue().strip().splitlines()[-1]
    return None


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            choices: dict[str, argparse.ArgumentParser] = action.choices
            return choices
    return {}


def _unknown_names(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """The subcommands, options and positional words of ``argv`` the parser has no place
    for (a value after an option that takes one is the option's)."""
    unknown: list[str] = []
    positionals: list[str] = []
    tokens = iter(argv)
    for token in tokens:
        if token.startswith("-"):
            action = parser._option_string_actions.get(token.split("=", 1)[0])
            if action is None:
                unknown.append(token)
            elif action.nargs != 0 and "=" not in token:
                next(tokens, None)  # its value
            continue
        subcommands = _subcommands(parser)
        if subcommands:
            if token not in subcommands:
                return [*unknown, token]
            parser, positionals = subcommands[token], []
            continue
        positionals.append(token)
    places = [a.nargs for a in parser._actions if not a.option_strings]
    if not any(n in ("*", "+", "...") for n in places):
        unknown += positionals[sum(n if isinstance(n, int) else 1 for n in places) :]
    return unknown


def _problems(parser: argparse.ArgumentParser, command: Command) -> Iterator[str]:
    for argv in argument_lists(command):
        try:
            args = _substituted(argv)
        except KeyError as exc:
            yield f"{command}: no value for `...` after {exc} (add it to OPTION_VALUES)"
            continue
        error = _parse_error(parser, args)
        if error is None:
            continue
        if command.inline and any(e in error for e in INCOMPLETE):
            unknown = _unknown_names(parser, args)
            if not unknown:
                continue
            error = f"unknown {unknown}"
        yield f"{command}\n    keygen {' '.join(args)}: {error}"


@pytest.mark.parametrize("page", DOC_FILES, ids=_page_id)
def test_every_command_line_of_the_page_parses(page: Path) -> None:
    """Every `keygen ...` line of the page, in code blocks and inline code, synopses
    expanded, is accepted by keygen's own argument parser."""
    parser = _strict_parser()
    problems = [p for command in commands(page) for p in _problems(parser, command)]
    assert not problems, "\n".join(problems)


def test_the_command_lines_are_found_in_every_shell_form(tmp_path: Path) -> None:
    """Prompts, continuations, pipes, `eval "$(...)"`, variables before the command, paths to
    the script and synopses all yield the keygen command and nothing after it."""
    page = tmp_path / "page.md"
    page.write_text(
        'Run `eval "$(keygen cluster env --dir DIR)"` or `keygen keys revoke`.\n'
        "```bash\n"
        "$ keygen allocate --size 5 \\\n"
        "    --namespace orders   # a comment\n"
        "keygen cluster status --json | jq .master\n"
        "KEYGEN_LOG_LEVEL=debug .venv/bin/keygen serve --workers 2 > log &\n"
        "psql -d keygen -c 'SELECT 1'\n"
        "keygen ledger status [--json] [--keys [--days N]]\n"
        "```\n"
    )
    found = [(c.text, c.inline) for c in commands(page)]
    assert found == [
        ("keygen cluster env --dir DIR", True),
        ("keygen keys revoke", True),
        ("keygen allocate --size 5 --namespace orders", False),
        ("keygen cluster status --json", False),
        ("keygen serve --workers 2", False),
        ("keygen ledger status [--json] [--keys [--days N]]", False),
    ]
    synopsis = next(c for c in commands(page) if "[" in c.text)
    assert argument_lists(synopsis) == [
        ["ledger", "status"],
        ["ledger", "status", "--json"],
        ["ledger", "status", "--keys"],
        ["ledger", "status", "--keys", "--days", "N"],
    ]
    assert len([c for f in DOC_FILES for c in commands(f)]) > 100  # the real pages, too


# -- (ii) metric names ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exposition(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The Prometheus text of an app with every layer that has metrics of its own: the
    emergency reserve on, and a Redis layer (its Sentinel refuses: the families exist)."""
    settings = Settings(
        _env_file=None,
        data_dir=tmp_path_factory.mktemp("data"),
        instance_id="docs",
        reserve="on",
        redis_sentinel_hosts=f"127.0.0.1:{free_port()}",
    )

    async def scrape() -> str:
        async with running(create_app(settings)) as http:
            await http.get("/health")  # asks every layer (and the Sentinels) once
            response = await http.get("/metrics", headers={"Accept": "text/plain"})
            assert response.status_code == 200, response.text
            return response.text

    return asyncio.run(scrape())


def _exposed_names(exposition: str) -> set[str]:
    """Every name that stands for a family: its own, a counter's without `_total`, a
    histogram's series."""
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE):
        names.add(name)
        if kind == "counter":
            names.add(name.removesuffix("_total"))
            names.add(name.removesuffix("_total") + "_total")
        if kind in ("histogram", "summary"):
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


@pytest.mark.parametrize("page", DOC_FILES, ids=_page_id)
def test_every_metric_the_page_names_is_exposed(page: Path, exposition: str) -> None:
    """Every keygen_* metric name on the page is a family of /metrics' Prometheus text."""
    exposed = _exposed_names(exposition)
    named = set(METRIC_WORD.findall(page.read_text())) - NOT_METRICS
    missing = sorted(named - exposed)
    assert not missing, f"{_page_id(page)} names metrics /metrics does not have: {missing}"


# -- (iii) runbooks and links ------------------------------------------------------------------


def _runbooks(node: Any) -> Iterator[str]:
    """Every value of a key naming a runbook (runbook, runbook_url, ...) in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            if "runbook" in str(key) and isinstance(value, str):
                yield value
            else:
                yield from _runbooks(value)
    elif isinstance(node, list):
        for item in node:
            yield from _runbooks(item)


def _broken(target: str, page: Path) -> str | None:
    """Why a relative link from ``page`` (or from the repository root, for a runbook) leads
    nowhere, or None."""
    path_part, _, fragment = target.partition("#")
    linked = (page.parent / path_part).resolve() if path_part else page
    if not linked.exists():
        return f"{target}: no file {linked}"
    if fragment and linked.suffix == ".md" and fragment not in anchors(linked):
        return f"{target}: no heading with anchor #{fragment} in {_page_id(linked)}"
    return None


@pytest.mark.parametrize("rules", ALERT_FILES, ids=_page_id)
def test_every_runbook_link_leads_to_a_heading(rules: Path) -> None:
    """Each alert's runbook annotation names a doc and an anchor its headings have."""
    runbooks = list(_runbooks(yaml.safe_load(rules.read_text())))
    assert runbooks, f"no runbook annotations in {rules}"
    broken = [b for r in runbooks if (b := _broken(r, ROOT / "README.md")) is not None]
    assert not broken, "\n".join(broken)


def test_every_alert_has_a_runbook() -> None:
    """Every rule of deploy/prometheus/alerts.yml links to its runbook."""
    groups = yaml.safe_load(ALERT_FILES[0].read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert rules
    missing = [r["alert"] for r in rules if "runbook" not in r.get("annotations", {})]
    assert not missing, f"alerts without a runbook: {missing}"


@pytest.mark.parametrize("page", DOC_FILES, ids=_page_id)
def test_every_relative_link_of_the_page_leads_somewhere(page: Path) -> None:
    """Every link of the page into the repository names a file that exists and, into a
    Markdown page, a heading anchor that page has."""
    broken = [
        f"{_page_id(page)}:{line}: {b}"
        for line, target in relative_links(page)
        if (b := _broken(target, page)) is not None
    ]
    assert not broken, "\n".join(broken)
