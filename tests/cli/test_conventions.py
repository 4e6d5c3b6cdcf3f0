"""The command line's conventions (issue 27): grouped help, config files, one CSV vocabulary, progress bars,
the data roles said, the usable models, the end of a run, and no control byte in any line."""

from __future__ import annotations

import re

import pytest
from helpers import run_cli

from transferlab.cli.options import DEFAULTS, GROUPS, RANK_OPTIONS, TRAIN_OPTIONS


def _help_entries(text: str) -> dict[str, str]:
    """``-h`` text -> {flag: its whole entry, wrapped lines joined}."""
    entries: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        start = re.match(r"  (--?[\w-]+)", line)
        if start:
            current = start.group(1)
            entries[current] = line.strip()
        elif current and line.startswith("     "):
            entries[current] += " " + line.strip()
        else:
            current = None
    return entries


def _sections(text: str) -> dict[str, str]:
    """``-h`` text -> {flag: the header of the group it is listed in}."""
    found, header = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"[a-z][a-z -]*:", line):
            header = line[:-1]
        elif header and re.match(r"  --?[\w-]+", line):
            found[line.split()[0]] = header
    return found


@pytest.mark.parametrize("command", ["train", "study", "rank"])
def test_help_groups_the_options_and_shows_each_default_once(command):
    proc = run_cli(command, "-h")
    assert proc.returncode == 0, proc.stderr
    entries = _help_entries(proc.stdout)
    flags = [flag for _, flag, _ in TRAIN_OPTIONS if command != "rank" or flag in RANK_OPTIONS]
    assert set(flags) <= set(entries), set(flags) - set(entries)
    for entry in entries.values():
        assert len(re.findall(r"\(default\b", entry)) <= 1, entry  # "(default: x)", "(default)", "(default 0: ...)"
    for _, flag, kwargs in TRAIN_OPTIONS:
        value = DEFAULTS[flag[2:].replace("-", "_")]
        if flag in entries and value is not None and kwargs.get("action") != "store_true" and flag != "--data":
            assert f"(default: {value})" in entries[flag], entries[flag]
    sections = _sections(proc.stdout)
    assert all(sections[flag] == group for group, flag, _ in TRAIN_OPTIONS if flag in flags)
    if command == "train":
        headers = list(dict.fromkeys(sections.values()))
        assert headers == ["options", *GROUPS], headers  # argparse's own -h, then every group in order
        assert sections["--nproc"] == "hardware" and sections["--out"] == "output"
