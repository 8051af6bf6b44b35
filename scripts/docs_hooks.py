"""MkDocs hooks (mkdocs.yml ``hooks:``): the reference pages, generated from the code at build time.

A page asks for generated text with a line of its own, an HTML comment (invisible where the
Markdown is read unbuilt):

    <!-- arihpc-docs: config -->             every key of arihpc/arihpc.yaml: default, comment
    <!-- arihpc-docs: site-profile -->       every key of a site profile, as profile.py checks it
    <!-- arihpc-docs: failures -->           failure classes, their rules and retry policies
    <!-- arihpc-docs: cli -->                every command of the ``arihpc`` click group
    <!-- arihpc-docs: file PATH [LANG] -->   a file of the repository, as a code block
    <!-- arihpc-docs: run ARGS... -->        what ``arihpc ARGS...`` prints, as a code block

``benchmarks.md`` is made from BENCHMARKS.md at the repository root. An unknown directive, a
command that fails, or a key with no description fails the build.
"""

from __future__ import annotations

import ast
import html
import inspect
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = ROOT / "arihpc" / "arihpc.yaml"
DIRECTIVE = re.compile(r"^<!--\s*arihpc-docs:\s*(\S+)\s*(.*?)\s*-->\s*$", re.M)


class DocsError(Exception):
    """A generated part that cannot be made: the build stops."""


def _build_error(message: str) -> Exception:
    try:
        from mkdocs.exceptions import PluginError
    except ImportError:                 # imported by a test without mkdocs
        return DocsError(message)
    return PluginError(message)


# --- helpers -------------------------------------------------------------------------------

# Characters Markdown would still read inside raw HTML (emphasis, escapes, code, table cells).
_MARKUP = {"\\": "&#92;", "*": "&#42;", "_": "&#95;", "`": "&#96;", "|": "&#124;"}


def _unmarked(text: str, keep: str = "") -> str:
    text = html.escape(text, quote=False)
    for char, entity in _MARKUP.items():
        if char not in keep:
            text = text.replace(char, entity)
    return text


def code(value: str) -> str:
    """Inline code that is safe in a table cell: raw HTML, nothing in it read as Markdown."""
    return "<code>" + _unmarked(value) + "</code>"


def cell(text: str) -> str:
    """Prose for a table cell: one line, pipes escaped outside and inside code spans."""
    parts = text.replace("\n", " ").split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2:                       # inside backticks
            out.append(code(part))
        else:
            out.append(_unmarked(part, keep="_"))
    if len(parts) % 2 == 0:             # an unmatched backtick: keep it as text
        out[-1] = "`" + out[-1]
    return "".join(out)


def flow(value: Any) -> str:
    """A YAML value as one line, as it would be written in a config file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return yaml.safe_dump([value], default_flow_style=True, width=10**6).strip()[1:-1]
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()


# --- arihpc.yaml with its comments ---------------------------------------------------------

class Setting:
    """One key of arihpc.yaml: dotted path (below ``arihpc``), value, comment, children."""

    def __init__(self, path: str, value: Any, comment: str, children: list["Setting"]):
        self.path, self.value, self.comment, self.children = path, value, comment, children

    def walk(self) -> Iterator["Setting"]:
        yield self
        for child in self.children:
            yield from child.walk()


def _comment_above(lines: list[str], line: int) -> list[str]:
    found = []
    for text in reversed(lines[:line]):
        stripped = text.strip()
        if not stripped.startswith("#"):
            break
        found.append(stripped.lstrip("#").strip())
    return list(reversed(found))


def _comment_after(lines: list[str], line: int, column: int) -> str:
    rest = lines[line][column:].strip() if line < len(lines) else ""
    rest = rest.lstrip(":").strip() if rest.startswith(":") else rest
    return rest[1:].strip() if rest.startswith("#") else ""


def read_settings(path: Path = DEFAULTS_FILE) -> tuple[str, Setting]:
    """(the file's opening comment, the ``arihpc`` setting with every key below it)."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    root = yaml.compose(text)
    data = yaml.safe_load(text)
    (key, value), = root.value
    header = " ".join(_comment_above(lines, key.start_mark.line))
    return header, _setting("", value, data[key.value], "", lines, in_flow=False)


def _setting(path: str, node, value: Any, comment: str, lines: list[str],
             in_flow: bool) -> Setting:
    children = []
    if isinstance(node, yaml.MappingNode):
        flow_style = in_flow or bool(node.flow_style)
        for key, child in node.value:
            name = str(key.value)
            words: list[str] = []
            if not flow_style:
                words = _comment_above(lines, key.start_mark.line)
                if isinstance(child, yaml.ScalarNode) or child.flow_style:
                    after = _comment_after(lines, child.end_mark.line, child.end_mark.column)
                else:
                    after = _comment_after(lines, key.end_mark.line, key.end_mark.column)
                words += [after] if after else []
            child_path = f"{path}.{name}" if path else name
            children.append(_setting(child_path, child, value[name], " ".join(words), lines,
                                     flow_style))
    return Setting(path, value, comment, children)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value of every leaf (lists are leaves) of a nested mapping."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def _default_cell(setting: Setting, tables: set[str]) -> str:
    value = setting.value
    if isinstance(value, dict):
        kind = "a table given whole" if f"arihpc.{setting.path}" in tables else "a group"
        return f"<em>{kind}: {len(value)} key{'s' if len(value) != 1 else ''} below</em>"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        names = ", ".join(code(str(next(iter(v.values())))) for v in value)
        return f"<em>{len(value)} rules:</em> {names}"
    if isinstance(value, list) and len(flow(value)) > 60:
        return "<br>".join(code(flow(v)) for v in value)
    return code(flow(value))


def config_markdown() -> str:
    from arihpc import config

    _, root = read_settings()
    tables = set(config.TABLES)
    out = []
    general = [s for s in root.children if not s.children]
    sections = [s for s in root.children if s.children]
    groups = [("General", "", general)] + [(s.path, s.comment, list(s.walk())[1:])
                                           for s in sections]
    for title, comment, settings in groups:
        out += [f"## `{title}`" if title != "General" else "## General", ""]
        if f"arihpc.{title}" in tables:
            comment += (" " if comment else "") + "A table given whole: a campaign config file " \
                "that sets it replaces all of it."
        if comment:
            out += [cell(comment), ""]
        out += ["| key | default | what it is |", "|---|---|---|"]
        for setting in settings:
            note = setting.comment
            if f"arihpc.{setting.path}" in tables:
                note += (" " if note else "") + "A campaign config file that sets it replaces " \
                    "the whole table."
            if setting.path == "failures.classes":
                note += " In full, with their retry policies: [Failure classes](failures.md)."
            out.append(f"| {code(setting.path)} | {_default_cell(setting, tables)} | "
                       f"{cell(note) if note else '-'} |")
        out.append("")
    return "\n".join(out)


# --- the site profile, as arihpc/sites/profile.py validates it -----------------------------

# What a profile key is when arihpc.yaml has no default (and so no comment) for it.
PROFILE_ONLY = {
    "description": "One line naming the site.",
    "queue": "The batch queue or partition the jobs go to (`#SBATCH -p`, `#PBS -q`); null: "
             "the batch system's default.",
    "account": "The account the jobs are charged to (`#SBATCH -A`, `#PBS -A`); null: none.",
    "screen": "The virtual screen of `xvfb-run` (`-screen 0 WxHxDEPTH`), with `x11: true`.",
    "storage.ms-retention-years": "How long a kept measurement set is kept: its retention "
                                  "date is this many years after it was written.",
    "routing": "Which MOUS sizes (raw data, GB) this site takes.",
    "storage": "Where the MOUS work directories, scratch and kept measurement sets live.",
    "node-classes": "The kinds of node, by a name of your choice (it names the batch jobs "
                    "and the workers, and is the `--node-class` of `arihpc sites script` "
                    "and `sites up`). A MOUS goes to the smallest class with the memory it is "
                    "predicted to need.",
    "node-classes.NAME.cores": "Cores of one node of this class.",
    "node-classes.NAME.memory": "Memory of one node of this class, e.g. `64GB` or `512MB`.",
    "casa": "The CASA installations of the site and the version that images.",
    "casa.imaging": "The CASA version the image stage uses; one of `casa.installations`.",
    "casa.installations": "CASA version -> the command that starts it, e.g. "
                          "`'6.5.4': /opt/casa/casa-6.5.4/bin/casa`; `pypi` is CASA 6 from PyPI "
                          "in arihpc's own Python (`pip install -e '.[casa]'`). The restore "
                          "stage picks the version that calibrated each MOUS (named in its "
                          "delivery); a MOUS whose version is not listed fails as "
                          "`casa-version`.",
}
# A valid profile to change one key of at a time (values as a real site might have them).
PROBE_BASE = {"batch-system": "pbspro", "walltime": "96:00:00",
              "node-classes": {"NAME": {"cores": 16, "memory": "64GB"}},
              "casa": {"imaging": "6.5.4", "installations": {"6.5.4": "/opt/casa/bin/casa"}}}
PROBE_VALUES = ("x", -1, 10**6, "9999:00:00", [], {"abc": "/bin/casa"}, {"6.5.4": ""})
UNKNOWN = "zzzzzzzzzzzz"


def _probe(data: dict):
    """The ProfileError a profile gets, or None."""
    from arihpc.errors import ProfileError
    from arihpc.sites.profile import parse_profile

    try:
        parse_profile("probe", Path("probe.yaml"), data)
    except ProfileError as e:
        return e
    return None


def _with(path: str, value: Any, delete: bool = False) -> dict:
    import copy

    data = copy.deepcopy(PROBE_BASE)
    *parents, last = path.split(".")
    where = data
    for part in parents:
        where = where.setdefault(part, {})
    if delete:
        where.pop(last, None)
    else:
        where[last] = value
    return data


def profile_keys() -> list[str]:
    """Every key a site profile may have, as the validator itself lists them (the fix of an
    unknown key names the known ones), in dotted form with NAME for a node class."""
    keys = []
    for section in ("", "routing", "storage", "node-classes.NAME", "casa"):
        error = _probe(_with(f"{section}.{UNKNOWN}" if section else UNKNOWN, 1))
        if error is None or not (error.fix or "").startswith("known keys: "):
            raise _build_error(f"site profile: cannot list the keys of {section or 'the top'}"
                               f" (got {error})")
        names = error.fix.removeprefix("known keys: ").split(", ")
        keys += [f"{section}.{n}" if section else n for n in names]
    return keys


def _checks(key: str) -> tuple[bool, list[str]]:
    """(required, the distinct errors bad values of ``key`` get)."""
    missing = _probe(_with(key, None, delete=True))
    required = missing is not None and (missing.key or "").startswith(key)
    seen, messages = set(), []
    for value in PROBE_VALUES:
        error = _probe(_with(key, value))
        if error is None or not (error.key or "").startswith(key):
            continue
        text = f"{error.message}" + (f"; fix: {error.fix}" if error.fix else "")
        shape = text.replace(repr(value), "V")
        shape = re.sub(r"'[^']*'|\"[^\"]*\"|-?\d[\d.e+]*|got \w+", "V", shape)
        if shape not in seen:
            seen.add(shape)
            messages.append(f"`{key.split('.')[-1]}: {flow(value)}` -> {text}")
    return required, messages


def site_profile_markdown() -> str:
    from arihpc import config
    from arihpc.sites import profile

    header, root = read_settings()
    comments = {s.path: s.comment for s in root.walk()}
    defaults = flatten(config.get("site"))
    defaults.update({k: v for k, v in config.get("site").items() if isinstance(v, dict) and
                     not v})
    keys = profile_keys()
    out = []
    sections = [("Top level", ""), ("routing", "routing"), ("storage", "storage"),
                ("node-classes", "node-classes.NAME"), ("casa", "casa")]
    for title, prefix in sections:
        here = [k for k in keys if (k.rsplit(".", 1)[0] if "." in k else "") == prefix]
        if prefix == "":
            order = ["description", *config.get("site"), "node-classes", "casa"]
            here.sort(key=order.index)
        out += [f"## {title if prefix == '' else '`' + prefix + '`'}", ""]
        if prefix in PROFILE_ONLY:
            out += [cell(PROFILE_ONLY[prefix]), ""]
        elif f"site.{prefix}" in comments and comments[f"site.{prefix}"]:
            out += [cell(comments[f"site.{prefix}"]), ""]
        out += ["| key | default | what it is | what a bad value gets |", "|---|---|---|---|"]
        for key in here:
            config_path = "site." + key.replace("node-classes.NAME", "node-class")
            text = PROFILE_ONLY.get(key) or comments.get(config_path, "")
            if not text:
                raise _build_error(f"site profile key {key!r} has no description: comment it "
                                   f"in {DEFAULTS_FILE.name} or add it to PROFILE_ONLY in "
                                   f"{Path(__file__).name}")
            required, checks = _checks(key)
            lookup = key.replace("node-classes.NAME", "node-class")
            if required:
                default = "<strong>required</strong>"
            elif lookup in defaults:
                default = code(flow(defaults[lookup]))
            elif key in ("routing", "storage"):
                default = "<em>see below</em>"
            else:
                default = code(flow(""))
            out.append(f"| {code(key)} | {default} | {cell(text)} | "
                       f"{'<br>'.join(cell(c) for c in checks) or 'not checked'} |")
        out.append("")
    dirs = [str(d).replace(str(ROOT), "<repository>").replace(str(Path.home()), "~")
            for d in profile.PROFILE_DIRS]
    out += ["## Where profiles are found", "",
            "A `SITE` argument (`--site`, `sites check SITE`, ...) is a path to a `.yaml` file, "
            "or a name looked up, first match wins, in: " +
            ", ".join(code(d + "/NAME.yaml") for d in dirs) + " (then `.yml`).", ""]
    return "\n".join(out)


# --- failure classes -----------------------------------------------------------------------

def policy_text(policy: dict) -> str:
    if policy.get("resume"):
        return "resumed from its last checkpoint in a fresh job; not counted as a failure"
    retries = int(policy.get("retries", 0))
    if retries == 0:
        return "never retried"
    text = "retried once" if retries == 1 else f"retried up to {retries} times"
    if policy.get("backoff-s"):
        text += f", the first after {policy['backoff-s']:g} s" + \
            (", each next wait twice as long" if retries > 1 else "")
    if policy.get("memory-factor"):
        text += f", with {policy['memory-factor']:g} x the memory (a bigger node class if " \
                "the site has one)"
    return text


def assigned_classes() -> dict[str, list[tuple[str, str]]]:
    """Classes the orchestrator and the runner set themselves (a dict literal with
    ``"error_class": "NAME"`` and a message): name -> [(module file, its message)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    paths = [p for package in ("campaign", "runner")
             for p in sorted((ROOT / "arihpc" / package).rglob("*.py"))]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Dict):
                continue
            items = {k.value: v for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant)}
            name = items.get("error_class")
            if isinstance(name, ast.Constant) and isinstance(name.value, str) and \
                    "message" in items:
                message = items.get("message")
                said = _message_text(message) if message is not None else ""
                found.setdefault(name.value, []).append(
                    (str(path.relative_to(ROOT)), said))
    return found


def _message_text(node) -> str:
    """An f-string message with its fields shown as {...}."""
    if isinstance(node, ast.Constant):
        return str(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{" + ast.unparse(value.value) + "}")
        return "".join(parts)
    return ast.unparse(node)


def failures_markdown() -> str:
    from arihpc import config
    from arihpc.runner import failures

    _, root = read_settings()
    comments = {s.path: s.comment for s in root.walk()}
    rules = config.get("failures.classes")
    policies = config.get("failures.retry")
    assigned = assigned_classes()
    names = [r["class"] for r in rules]
    extra = [c for c in (*failures.CLASSES, *policies, *assigned) if c not in names]
    extra = list(dict.fromkeys(extra))
    out = ["## The rules, in order", "",
           "A stage's log is searched rule by rule, top to bottom; the first rule with a "
           "matching line names the class (the patterns are Python regular expressions, "
           "searched anywhere in a line). If no line matches, a stage killed by a signal gets "
           "the class whose rule lists that signal. A stage that exited non-zero with no match "
           "is `unknown`.", "",
           "| # | class | log lines (regex) | signals | retry policy |", "|---|---|---|---|---|"]
    for number, rule in enumerate(rules, 1):
        name = rule["class"]
        note = comments.get(f"failures.retry.{name}", "")
        policy = policy_text(failures.retry_policy(name)) + (f" ({note})" if note else "")
        out.append(f"| {number} | {code(name)} | "
                   f"{'<br>'.join(code(p) for p in rule.get('log', [])) or '-'} | "
                   f"{', '.join(code(s) for s in rule.get('signals', [])) or '-'} | "
                   f"{cell(policy)} |")
    out += ["", "## Classes no log rule gives", "",
            "| class | set by | retry policy |", "|---|---|---|"]
    for name in extra:
        where = assigned.get(name, [])
        if name == "unknown":
            said = "a stage that failed with no rule matching (or ran past " \
                   "`runner.stage-timeout-s`)"
        elif where:
            said = "; ".join(f"`{path}`: {message}" if message else f"`{path}`"
                             for path, message in where)
        else:
            said = "the runner"
        note = comments.get(f"failures.retry.{name}", "")
        policy = policy_text(failures.retry_policy(name)) + (f" ({note})" if note else "")
        if name not in policies:
            policy += " (no policy in `failures.retry`: the default)"
        out.append(f"| {code(name)} | {cell(said)} | {cell(policy)} |")
    out += ["", "## Never a failure", "",
            "Lines matching these (`failures.ignore`) are dropped before any rule is tried:", ""]
    out += [f"- {code(p)}" for p in config.get("failures.ignore")]
    rates = config.get("planning.failure-rates")
    out += ["", "## What `arihpc plan` assumes", "",
            "The planner draws failures per attempt with these rates "
            "(`planning.failure-rates`) and applies the retry policies above:", "",
            "| class | rate per attempt | stage it strikes |", "|---|---|---|"]
    out += [f"| {code(name)} | {rate['rate']:.1%} | {code(rate['stage'])} |"
            for name, rate in rates.items()]
    return "\n".join(out) + "\n"


# --- the command line ----------------------------------------------------------------------

def _prose(text: str) -> str:
    """Docstring prose as Markdown: code spans kept, everything else escaped."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = html.escape(parts[i], quote=False).replace("*", r"\*").replace("_", r"\_")
    return "`".join(parts)


def _help_markdown(text: str) -> list[str]:
    out = []
    for paragraph in re.split(r"\n\s*\n", inspect.cleandoc(text or "")):
        if paragraph.startswith("\b"):
            body = paragraph[1:].lstrip("\n")
            out += ["```text", body.rstrip(), "```", ""]
        elif paragraph.strip():
            out += [_prose(" ".join(line.strip() for line in paragraph.splitlines())), ""]
    return out


def cli_commands():
    """(command path, click command, its context) for the group and every command below it."""
    import click

    from arihpc.cli.main import main

    def walk(command, name, parent):
        ctx = click.Context(command, info_name=name, parent=parent, terminal_width=100,
                            max_content_width=100, **command.context_settings)
        yield ctx.command_path, command, ctx
        if isinstance(command, click.Group):
            for sub in command.list_commands(ctx):
                yield from walk(command.get_command(ctx, sub), sub, ctx)

    yield from walk(main, "arihpc", None)


def _takes_ctx(param) -> bool:
    """click 8.2 gave make_metavar a ctx argument."""
    return "ctx" in inspect.signature(param.make_metavar).parameters


def cli_markdown() -> str:
    import click

    out = []
    for path, command, ctx in cli_commands():
        depth = 3 if path.count(" ") > 1 else 2
        out += [f"{'#' * depth} `{path}`", ""]
        pieces = " ".join(command.collect_usage_pieces(ctx))
        out += ["```text", f"{path} {pieces}".rstrip(), "```", ""]
        out += _help_markdown(command.help or "")
        rows = [p.get_help_record(ctx) for p in command.get_params(ctx)
                if isinstance(p, click.Option) and p.name != "help"]
        rows = [r for r in rows if r]
        arguments = [p.make_metavar(ctx) if _takes_ctx(p) else p.make_metavar()
                     for p in command.get_params(ctx) if isinstance(p, click.Argument)]
        if arguments:
            out += ["Arguments: " + ", ".join(f"`{a}`" for a in arguments), ""]
        if rows:
            out += ["| option | what it does |", "|---|---|"]
            out += [f"| {code(names)} | {cell(help_text)} |" for names, help_text in rows]
            out.append("")
        if isinstance(command, click.Group):
            subs = command.list_commands(ctx)
            out += ["Commands: " + ", ".join(
                f"[`{path} {s}`](#{(path + ' ' + s).replace(' ', '-')})" for s in subs), ""]
    return "\n".join(out)


# --- files and command output ----------------------------------------------------------------

def file_markdown(args: str) -> str:
    words = args.split()
    path = ROOT / words[0]
    if not path.is_file():
        raise _build_error(f"arihpc-docs file: no file {words[0]}")
    lang = words[1] if len(words) > 1 else {".yaml": "yaml", ".yml": "yaml", ".sh": "bash",
                                            ".py": "python"}.get(path.suffix, "text")
    return f"```{lang}\n# {words[0]}\n{path.read_text(encoding='utf-8').rstrip()}\n```"


def run_markdown(args: str) -> str:
    """What ``arihpc ARGS`` prints (stdout), run in this process; it must succeed."""
    from click.testing import CliRunner

    from arihpc.cli.main import main

    argv = shlex.split(args)
    result = CliRunner().invoke(main, argv, catch_exceptions=False)
    if result.exit_code != 0:
        raise _build_error(f"arihpc {args}: exit status {result.exit_code}: {result.output}")
    lang = "bash" if argv[:2] == ["sites", "script"] else "text"
    return f"```{lang}\n$ arihpc {args}\n{result.stdout.rstrip()}\n```" if lang == "text" \
        else f"```{lang}\n{result.stdout.rstrip()}\n```"


GENERATORS = {"config": config_markdown, "site-profile": site_profile_markdown,
              "failures": failures_markdown, "cli": cli_markdown}


def expand(markdown: str, where: str = "") -> str:
    """Every directive of a page replaced by what it asks for."""
    def replace(match: re.Match) -> str:
        name, args = match.group(1), match.group(2)
        if name in GENERATORS:
            return GENERATORS[name]()
        if name == "file":
            return file_markdown(args)
        if name == "run":
            return run_markdown(args)
        raise _build_error(f"{where}: unknown directive arihpc-docs: {name}")
    return DIRECTIVE.sub(replace, markdown)


# --- the hooks -----------------------------------------------------------------------------

def on_files(files, config):
    """benchmarks.md: BENCHMARKS.md of the repository root, which stays there."""
    from mkdocs.structure.files import File

    # Its links are relative to the root: a link into docs/ is one to a page beside it.
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8").replace("](docs/", "](")
    files.append(File.generated(config, "benchmarks.md", content=text))
    return files


def on_page_markdown(markdown, page, config, files):
    return expand(markdown, page.file.src_uri)
