"""The documentation: the MkDocs site builds in strict mode, its generated references match the
code, every ``arihpc`` command and option the README and the docs name exists, the README stays
short, and the quick start's commands run green, in order, on a fresh folder.

The site is built once (``mkdocs build --strict -f mkdocs.yml -d TMP``); the generated pages come
from scripts/docs_hooks.py. What the references must list is read here from the code itself,
not from the hook: the keys of arihpc/arihpc.yaml, the keys the site-profile validator knows
(its "known keys" fix for an unknown key), the failure classes and the click commands.
"""

from __future__ import annotations

import html
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml
from conftest import REPO_ROOT

from arihpc.cli.main import main as arihpc_cli

DOCS = REPO_ROOT / "docs"
README = REPO_ROOT / "README.md"
QUICKSTART = DOCS / "quickstart.md"
BUILD_TIMEOUT_S = 120
QUICKSTART_TIMEOUT_S = 150
STALE = ("what is built so far", "the cli so far", "later slurm, casa, chromium", "so far:",
         "not yet built", "todo")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built in strict mode (any warning fails)."""
    out = tmp_path_factory.mktemp("site")
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is not installed: pip install -e '.[docs]' (scripts/test.sh does)")
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
                            str(REPO_ROOT / "mkdocs.yml"), "-d", str(out)],
                           cwd=REPO_ROOT, capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr}"
    return out


def page(site: Path, name: str) -> str:
    """A built page's HTML with its entities decoded (generated tables escape Markdown)."""
    return html.unescape((site / name / "index.html").read_text(encoding="utf-8"))


def flatten(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def test_the_site_builds_with_every_page_of_the_nav(site):
    nav = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())["nav"]

    def pages(items):
        for item in items:
            for value in item.values():
                yield from (pages(value) if isinstance(value, list) else [value])
    for source in pages(nav):
        built = site / Path(source).with_suffix("") / "index.html"
        if source == "index.md":
            built = site / "index.html"
        assert built.is_file(), f"{source} is in the nav but was not built"


def test_the_configuration_reference_lists_every_key_of_arihpc_yaml(site):
    text = page(site, "reference/configuration")
    data = yaml.safe_load((REPO_ROOT / "arihpc" / "arihpc.yaml").read_text())["arihpc"]
    keys = flatten(data)
    assert len(keys) > 100
    missing = [key for key in keys if f"<code>{key}</code>" not in text]
    assert missing == [], "keys of arihpc.yaml missing from the configuration reference"
    # a comment of the file reaches its key's row
    assert "How long <code>arihpc run</code> waits for a store that stopped answering" in text


def _profile_keys() -> list[str]:
    """Every key a site profile may have, as the validator lists them for an unknown key."""
    from arihpc.errors import ProfileError
    from arihpc.sites.profile import parse_profile

    base = {"node-classes": {"NAME": {"cores": 4, "memory": "8GB"}},
            "casa": {"imaging": "6.7.0.31", "installations": {"6.7.0.31": "pypi"}}}
    keys = []
    for section in ("", "routing", "storage", "node-classes.NAME", "casa"):
        data = yaml.safe_load(yaml.safe_dump(base))
        where = data
        for part in filter(None, section.split(".")):
            where = where.setdefault(part, {})
        where["zzzzzzzzzz"] = 1
        with pytest.raises(ProfileError) as error:
            parse_profile("probe", Path("probe.yaml"), data)
        assert error.value.fix.startswith("known keys: "), error.value
        names = error.value.fix.removeprefix("known keys: ").split(", ")
        keys += [f"{section}.{name}" if section else name for name in names]
    return keys


def test_the_site_profile_reference_lists_every_key_the_validator_knows(site):
    text = page(site, "reference/site-profile")
    keys = _profile_keys()
    assert {"batch-system", "walltime", "storage.ms-store", "node-classes.NAME.job-memory",
            "casa.installations"} <= set(keys)
    missing = [key for key in keys if f"<code>{key}</code>" not in text]
    assert missing == [], "site-profile keys missing from the reference"
    # the validator's own message for a bad value is there
    assert "is not a walltime; fix: write it as HH:MM:SS" in text


def test_the_failure_reference_lists_every_class_and_policy(site):
    from arihpc import config
    from arihpc.runner.failures import CLASSES

    text = page(site, "reference/failures")
    classes = {*CLASSES, *config.get("failures.retry"),
               *(rule["class"] for rule in config.get("failures.classes"))}
    missing = [name for name in sorted(classes) if f"<code>{name}</code>" not in text]
    assert missing == []
    assert "retried up to 2 times, the first after 60 s" in text      # download
    assert "<code>needs-bigger-node</code>" in text                     # set by the orchestrator


def _command_paths() -> list[tuple[str, click.Command]]:
    found = []

    def walk(command, path, parent):
        ctx = click.Context(command, info_name=path.split()[-1], parent=parent)
        found.append((path, command))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                walk(command.get_command(ctx, name), f"{path} {name}", ctx)
    walk(arihpc_cli, "arihpc", None)
    return found


def test_the_cli_reference_lists_every_command_and_option(site):
    text = page(site, "reference/cli")
    commands = _command_paths()
    assert len(commands) > 20
    for path, command in commands:
        assert re.search(rf"<h[23][^>]*><code>{re.escape(path)}</code>", text), \
            f"no heading for {path}"
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    assert opt in text, f"{path}: option {opt} missing"


def test_the_benchmarks_page_is_benchmarks_md(site):
    text = page(site, "benchmarks")
    for line in (REPO_ROOT / "BENCHMARKS.md").read_text().splitlines():
        if line.startswith("## "):
            title = html.unescape(re.sub(r"`([^`]*)`", r"\1", line[3:]))
            assert title in re.sub(r"<[^>]+>", "", text), f"BENCHMARKS.md section {title!r}"


def test_the_readme_is_short_and_has_no_build_notes():
    text = README.read_text()
    assert len(text.splitlines()) < 150
    lowered = text.lower()
    assert [phrase for phrase in STALE if phrase in lowered] == []
    for needed in ("arihpc demo", "bash scripts/test.sh", "arihpc catalog import",
                   "arihpc select --explain", "arihpc plan", "arihpc sites check",
                   "arihpc sites script", "arihpc sites up", "arihpc run", "arihpc status",
                   "arihpc dashboard", "arihpc report", "/metrics", "arihpc resume",
                   "arihpc retry", ".ari_l.tar", "mkdocs serve"):
        assert needed in text, needed
    # the test command is the one CI runs
    assert "bash scripts/test.sh" in (REPO_ROOT / ".ci" / "run").read_text()


# --- every arihpc command and option named in the README and the docs exists -----------------

_SHELL_END = {"#", "|", "||", "&&", ";", ">", ">>", "2>&1", "&"}


def _check_command_line(line: str) -> str | None:
    """None if ``arihpc ...`` names real commands and options; else what is wrong."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    command: click.Command = arihpc_cli
    path = ["arihpc"]
    words = words[1:]
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in _SHELL_END or word.startswith((">", "2>")):
            break
        word = word.strip("[]()`,.;:")
        if not word:
            continue
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            if name in ("-h", "--help"):
                continue
            params = {opt: p for p in command.params if isinstance(p, click.Option)
                      for opt in (*p.opts, *p.secondary_opts)}
            if name not in params:
                return f"{' '.join(path)} has no option {name}"
            option = params[name]
            skip = "=" not in word and not option.is_flag and not option.count
            continue
        if isinstance(command, click.Group):
            names = word.split("|")
            if all(n in command.commands for n in names):
                command = command.commands[names[0]]
                path.append(names[0])
                continue
            if word.islower() and word.isidentifier():
                return f"{' '.join(path)} has no command {word}"
    return None


def _named_commands(text: str) -> list[str]:
    """``arihpc ...`` in code blocks (one per line) and in inline code."""
    found = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ").strip()
            if line.startswith("arihpc "):
                found.append(line)
    without_blocks = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    found += [span for span in re.findall(r"`([^`\n]+)`", without_blocks)
              if span.startswith("arihpc ")]
    return found


def test_every_arihpc_command_named_in_the_readme_and_docs_exists():
    problems = []
    for path in [README, *sorted(DOCS.rglob("*.md"))]:
        for line in _named_commands(path.read_text(encoding="utf-8")):
            problem = _check_command_line(line)
            if problem:
                problems.append(f"{path.relative_to(REPO_ROOT)}: `{line}`: {problem}")
    assert problems == []


def test_the_command_check_itself():
    assert _check_command_line("arihpc sites up SITE --jobs 2") is None
    assert _check_command_line("arihpc --store URL plan --sites mup --no-resume") is None
    assert _check_command_line("arihpc ms list|fetch") is None
    assert _check_command_line("arihpc sites start mup") == "arihpc sites has no command start"
    assert _check_command_line("arihpc run --sites mup") == "arihpc run has no option --sites"


# --- the quick start runs ------------------------------------------------------------------

def quickstart_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, the output lines the page shows under it) of every ```console block, in
    order. Every other shell block of the page may only install."""
    steps: list[tuple[str, list[str]]] = []
    for lang, block in re.findall(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S):
        if lang in ("sh", "bash", "shell"):
            for line in block.splitlines():
                command = line.split("#", 1)[0].strip()
                assert not command or command.startswith(("python3 -m venv", "pip install")), \
                    f"a shell block of the quick start that the test does not run: {line}"
            continue
        if lang != "console":
            continue
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif line.strip():
                assert steps, f"output before any command: {line}"
                steps[-1][1].append(line)
    return steps


def _shows(expected: list[str], output: str) -> list[str]:
    """The shown lines not found in the output, in order; '…' stands for anything."""
    missing, position = [], 0
    lines = output.splitlines()
    for shown in expected:
        if shown.strip() == "…":
            continue
        pattern = ".*".join(re.escape(part) for part in shown.split("…"))
        for index in range(position, len(lines)):
            if re.fullmatch(pattern, lines[index].rstrip()):
                position = index + 1
                break
        else:
            missing.append(shown)
    return missing


def test_the_quick_start_runs_green_on_a_fresh_folder(tmp_path):
    steps = quickstart_steps(QUICKSTART.read_text(encoding="utf-8"))
    assert len(steps) >= 10 and steps[0][0].startswith("arihpc demo")
    marker = "@@arihpc-docs-step"
    script = ["set -u"]
    for number, (command, _) in enumerate(steps):
        script += [f"{command} 2>&1", f'status=$?; echo "{marker} {number} $status"',
                   '[ "$status" = 0 ] || exit "$status"']
    env = {k: v for k, v in os.environ.items()
           if k not in ("ARIHPC_STORE", "ARIHPC_CONFIG", "ARIHPC_DASHBOARD_TOKEN")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=QUICKSTART_TIMEOUT_S)
    outputs: list[str] = []
    current: list[str] = []
    for line in run.stdout.splitlines():
        if line.startswith(marker):
            _, number, status = line.split()
            assert status == "0", (f"quick start step {number} `{steps[int(number)][0]}` "
                                   f"failed ({status}):\n" + "\n".join(current) + run.stderr)
            outputs.append("\n".join(current))
            current = []
        else:
            current.append(line)
    assert run.returncode == 0 and len(outputs) == len(steps), \
        f"the quick start stopped:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    wrong = {command: missing for (command, shown), output in zip(steps, outputs)
             if (missing := _shows(shown, output))}
    assert wrong == {}, "output the quick start shows and the command did not print"
    assert (tmp_path / "arihpc-demo" / "campaign.html").is_file()
    assert (tmp_path / "my-campaign" / "arihpc.db").is_file()
