"""Every code block of README.md, run in order as a newcomer follows it (issue 18, acceptance 1):
the tutorial cannot drift from the code.

- `sh` blocks: each command runs from the checkout (`.venv/bin/` is this interpreter's folder);
  a command that serves an IOC (`make run`, `ndflow run [CONFIG]`) instead (re)starts the test's
  own IOC from that config, on the harness's private ports, under a prefix of its own. A few
  commands cannot run here and are skipped with the reason (SKIPPED).
- `python` blocks run for real, in a fresh interpreter, against the IOC running at that point;
  what they print must equal the `text` block that follows (nothing, when none follows).
- `console` blocks: `$ command` lines, each followed by exactly what it prints.
- `yaml` blocks: a block starting `# NAME.yml` is that file for the commands after it; any other
  one must make an IOC (`ndflow run --list-pvs`), completed where it is a fragment (FRAGMENTS).
- Every IOC's log must hold no ERROR or WARNING line and no traceback.

Paths under /tmp are moved into the test's own folder, and 13SIM1: to the IOC's prefix; outputs
are compared after mapping both back.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from conftest import REPO, IOCProcess, unique_prefix

README = REPO / "README.md"
VENV_BIN = Path(sys.executable).parent
README_PREFIX = "13SIM1:"

#: commands the test does not run, and why
SKIPPED = {
    "make test": "the test suite itself",
    "phoebus": "a GUI; the screens it opens are checked in test_screens",
    "export": "the harness keeps CA and PVA on loopback with ports of its own (conftest.CA_ENV)",
}


@dataclass
class Block:
    lang: str
    text: str
    line: int  # of the opening fence, 1-based

    def where(self) -> str:
        return f"README.md line {self.line} ({self.lang or 'plain'} block)"


def readme_blocks() -> list[Block]:
    blocks, lines = [], README.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        blocks.append(Block(fence.group(1), "\n".join(lines[i + 1:end]) + "\n", i + 1))
        i = end + 1
    return blocks


def strip_comment(line: str) -> str:
    """A shell line without its comment (from a `#` that starts a word, outside quotes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].strip()
    return line.strip()


class Session:
    """The reader's two terminals: the IOC currently running, and the commands typed."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ioc: IOCProcess | None = None
        self.prefix = README_PREFIX
        self.files: dict[str, Path] = {}  # README file name -> where the test wrote it
        self.iocs = 0
        self.config: str | None = None  # what the running IOC was started from
        self.touched = False  # a command ran since it started: it is no longer fresh
        self.ran: list[str] = []  # what was run, for the final check
        self.skipped: list[str] = []

    # --- substitutions ------------------------------------------------------------------------
    def forward(self, text: str) -> str:
        # /tmp first: the checkout itself (VENV_BIN) may lie under /tmp
        text = re.sub(r"(?<![\w.-])/tmp/(?=[\w.-])", f"{self.tmp}/tmp/", text)
        text = text.replace(README_PREFIX, self.prefix).replace(".venv/bin/", f"{VENV_BIN}/")
        for name, path in self.files.items():
            text = re.sub(rf"(?<![\w/.-]){re.escape(name)}\b", str(path), text)
        return text

    def back(self, text: str) -> str:
        for name, path in self.files.items():
            text = text.replace(str(path), name)
        return text.replace(f"{self.tmp}/tmp/", "/tmp/").replace(self.prefix, README_PREFIX)

    # --- the IOC ------------------------------------------------------------------------------
    def start(self, command: str, block: Block) -> None:
        """`make run [ARGS=CONFIG]` or `ndflow run [CONFIG]`: stop the IOC that runs (its log
        must be clean) and start this one; one just started from the same config and not used
        yet is as fresh as a new one, and stays."""
        words = shlex.split(command)
        args = [w.removeprefix("ARGS=") for w in words[2:]]
        assert not any(a.startswith("-") for a in args), f"{block.where()}: {command}: options " \
            "are the reader's choice; the test starts the IOC only from a config"
        self.ran.append(command)
        if self.ioc is not None and not self.touched and self.config == (args or [None])[0]:
            return
        self.stop()
        self.config, self.touched = (args or [None])[0], False
        self.iocs += 1
        folder = self.tmp / f"ioc{self.iocs}"
        folder.mkdir()
        config = ioc_config(REPO / args[0], folder) if args else None
        self.prefix = unique_prefix()
        self.ioc = IOCProcess(config, folder, self.prefix)
        self.ioc.wait_ready(timeout=60)

    def stop(self) -> None:
        if self.ioc is None:
            return
        self.ioc.stop()
        log = self.ioc.log_path.read_text()
        bad = [line for line in log.splitlines()
               if re.search(r"\b(ERROR|WARNING|CRITICAL)\b|Traceback", line)]
        assert not bad, f"the IOC logged while the README was followed:\n" + "\n".join(bad)
        self.ioc = None

    # --- the blocks ---------------------------------------------------------------------------
    def sh(self, block: Block) -> None:
        for raw in block.text.splitlines():
            command = strip_comment(raw)
            if not command:
                continue
            skip = next((why for start, why in SKIPPED.items() if command.startswith(start)),
                        None)
            if skip:
                self.skipped.append(f"{command}: {skip}")
            elif re.match(r"^(make run|\S*ndflow run)\b", command) and "--list-pvs" not in command:
                self.start(command, block)
            else:
                done = self.run(command)
                assert done.returncode == 0, \
                    f"{block.where()}: {command} failed ({done.returncode}):\n{done.stdout}"

    def console(self, block: Block) -> None:
        steps: list[tuple[str, list[str]]] = []
        for line in block.text.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            else:
                assert steps, f"{block.where()}: output before any `$ command`"
                steps[-1][1].append(line)
        for command, expected in steps:
            done = self.run(strip_comment(command))
            assert self.back(done.stdout).splitlines() == expected, \
                f"{block.where()}: {command} printed:\n{done.stdout}"

    def python(self, block: Block, expected: str) -> None:
        self.touched = True
        done = subprocess.run([sys.executable, "-c", self.forward(block.text)],
                              capture_output=True, text=True, timeout=120, cwd=self.tmp,
                              env=dict(os.environ))
        assert done.returncode == 0, f"{block.where()} failed:\n{done.stderr}"
        assert self.back(done.stdout) == expected, \
            f"{block.where()} printed:\n{done.stdout}\nwhere the README says:\n{expected}"
        self.ran.append(f"python block at line {block.line}")

    def yaml(self, block: Block) -> None:
        named = re.match(r"^# (\S+\.ya?ml)\n", block.text)
        if named:  # the file a later command reads
            path = self.tmp / "files" / named.group(1)
            path.parent.mkdir(exist_ok=True)
            path.write_text(block.text)
            self.files[named.group(1)] = path
            return
        folder = self.tmp / f"yaml{block.line}"
        folder.mkdir()
        config = fragment_config(yaml.safe_load(block.text), folder)
        path = folder / "ioc.yml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        done = subprocess.run([str(VENV_BIN / "ndflow"), "run", "--list-pvs", str(path)],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{block.where()} makes no IOC:\n{done.stderr}"
        self.ran.append(f"yaml block at line {block.line}")

    def run(self, command: str) -> subprocess.CompletedProcess:
        self.ran.append(command)
        self.touched = True
        return subprocess.run(["bash", "-c", self.forward(command)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=300, cwd=REPO,
                              env=dict(os.environ))


def ioc_config(path: Path, folder: Path) -> str:
    """A config file of the checkout as `ndflow run` would read it from its own folder, with
    its screens written into the test's folder instead of the user's home."""
    config = yaml.safe_load(path.read_text())
    config["algorithm_folders"] = [str((path.parent / f).resolve())
                                   for f in config.get("algorithm_folders", [])]
    config["data_roots"] = [str((path.parent / Path(r).expanduser()).resolve())
                            for r in config.get("data_roots", [])]
    config["screens_dir"] = str(folder / "screens")
    return yaml.safe_dump(config, sort_keys=False)


def fragment_config(config: dict, folder: Path) -> dict:
    """What an IOC needs beyond a README fragment (FRAGMENTS): a simulated detector SIM1 when
    the fragment has no driver; its algorithm folders are the examples' (the fragments show
    examples/algorithms.yml); no screens; an interpreter that exists where it names an
    illustrative one; a data root, with the folders the fragment names in it, where it reads
    files."""
    config.setdefault("drivers", [{"type": "sim", "port": "SIM1"}])
    config["algorithm_folders"] = [str(REPO / "examples" / f)
                                   for f in config.get("algorithm_folders", [])]
    config.pop("screens_dir", None)
    for entry in config.get("drivers", []) + config.get("plugins", []):
        options = entry.get("options") or {}
        if options.get("python") and not os.access(options["python"], os.X_OK):
            options["python"] = sys.executable
        if entry.get("type") == "fits" and not config.get("data_roots"):
            config["data_roots"] = [str(folder)]
            (folder / options.get("folder", ".")).mkdir(parents=True, exist_ok=True)
    return config


FRAGMENTS = fragment_config.__doc__


@pytest.mark.timeout(600)
def test_every_readme_block_runs_as_written(tmp_path):
    blocks = readme_blocks()
    session = Session(tmp_path)
    (tmp_path / "tmp").mkdir()
    try:
        i = 0
        while i < len(blocks):
            block = blocks[i]
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            if block.lang == "python":
                output = following.text if following is not None and \
                    following.lang == "text" else ""
                session.python(block, output)
                i += 2 if output else 1
                continue
            if block.lang == "sh":
                session.sh(block)
            elif block.lang == "console":
                session.console(block)
            elif block.lang == "yaml":
                session.yaml(block)
            else:
                pytest.fail(f"{block.where()}: no rule runs a {block.lang or 'plain'} block; "
                            "give it a language this test knows (sh, console, python + text, "
                            "yaml)")
            i += 1
    except BaseException:
        if session.ioc is not None:  # the failure is the news, not the log of an IOC cut short
            session.ioc.stop()
        raise
    session.stop()
    # the README's opening two commands, the tutorial and its examples were all exercised
    assert session.ran[:1] == ["make run"], session.ran
    assert any("examples/algorithms.yml" in r for r in session.ran), session.ran
    assert sum(r.startswith("python block") for r in session.ran) >= 3, session.ran


def test_the_readme_opens_with_the_two_make_commands():
    first = readme_blocks()[0]
    assert [strip_comment(line) for line in first.text.splitlines()] == ["make run", "make test"]
