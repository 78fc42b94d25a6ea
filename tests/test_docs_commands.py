"""Every ``minilepton`` command written in the documentation parses as written (invariant 6).

The commands are taken from README.md, docs/*.md, benchmarks/README.md and the tutorials: fenced
code blocks, inline code, and in notebooks also ``!minilepton ...`` lines and subprocess argument
lists. Each goes through the CLI's own parser with no argument left over; a ``train`` command
must also build a ``TrainConfig``, and a ``bench NAME`` command must satisfy that benchmark's
parser. Nothing is run, so the check is quick and needs no data, workers or GPU.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
from pathlib import Path

import pytest

from minilepton import bench, cli

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = ["README.md", *sorted(p.relative_to(ROOT).as_posix()
                                 for p in (ROOT / "docs").glob("*.md")), "benchmarks/README.md"]
NOTEBOOKS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tutorials").glob("*.ipynb"))

# Commands that the documentation shows failing on purpose, and why. Each must still fail.
EXPECTED_TO_FAIL = {
    "minilepton train --batch-size 0": "docs/training.md shows the one-line error it gives",
}

SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "text"}
OPERATORS = re.compile(r"^[;&|()<>]+$")  # shell operators end a command
FENCE = re.compile(r"^\s*(```+|~~~+)\s*([\w+-]*)")
INLINE = re.compile(r"(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)


# --- finding the commands ---------------------------------------------------------------------

def _tokens(line: str) -> list[str] | None:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: reported as a broken command by the caller
        return None


def commands_in_shell(text: str, console: bool = False) -> list[str]:
    """The ``minilepton ...`` / ``python -m minilepton ...`` commands in shell text, one string
    each (arguments quoted as the shell would split them). ``console``: only ``$ `` lines."""
    found = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        line = line.strip()
        if console:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        line = line.lstrip("!")  # a notebook's shell escape
        if not re.search(r"(^|\s)minilepton(\s|$)", line):
            continue
        tokens = _tokens(line)
        if tokens is None:
            found.append(line)
            continue
        for i, tok in enumerate(tokens):
            if tok != "minilepton":
                continue
            via_python = i >= 2 and tokens[i - 1] == "-m" and re.fullmatch(
                r"python[0-9.]*|sys\.executable", tokens[i - 2])
            if not (via_python or i == 0 or OPERATORS.match(tokens[i - 1])):
                continue  # e.g. "import minilepton as ml"
            args = []
            for arg in tokens[i + 1:]:
                if OPERATORS.match(arg):
                    break
                args.append(arg)
            found.append(shlex.join(["minilepton", *args]))
    return found


def commands_in_markdown(text: str) -> list[str]:
    """Commands in fenced shell blocks, ``$ `` lines of console blocks, and inline code spans."""
    found, prose, block, language = [], [], None, None
    for line in text.splitlines(keepends=True):
        fence = FENCE.match(line)
        if block is None and fence:
            block, language = [], fence.group(2).lower()
        elif block is not None and fence and not fence.group(2):
            code = "".join(block)
            if language in SHELL_LANGUAGES:
                found += commands_in_shell(code, console=language == "console")
            elif language in ("python", "py"):
                found += commands_in_python(code)
            block = None
            prose.append("\n\n")
        elif block is not None:
            block.append(line)
        else:
            prose.append(line)
    for paragraph in "".join(prose).split("\n\n"):
        for match in INLINE.finditer(paragraph):
            found += commands_in_shell(" ".join(match.group(2).split()))
    return found


def commands_in_python(code: str) -> list[str]:
    """``subprocess`` argument lists (``["minilepton", "train", ...]``, ``[sys.executable, "-m",
    "minilepton", ...]``), shell strings that hold a command, and ``!minilepton`` lines."""
    found = commands_in_shell("\n".join(line for line in code.splitlines()
                                        if line.lstrip().startswith("!")))
    source = "\n".join("" if line.lstrip().startswith(("!", "%")) else line
                       for line in code.splitlines())
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return found
    for node in ast.walk(tree):
        if isinstance(node, (ast.List, ast.Tuple)) and node.elts:
            items = [e.value if isinstance(e, ast.Constant) else ast.unparse(e) for e in node.elts]
            if items[0] == "minilepton" or items[:3] in (["sys.executable", "-m", "minilepton"],
                                                          ["python", "-m", "minilepton"]):
                if all(isinstance(i, str) for i in items):
                    start = items.index("minilepton")
                    found.append(shlex.join(items[start:]))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.match(r"\s*(python[0-9.]* -m )?minilepton ", node.value):
                found += commands_in_shell(node.value)
    return found


def commands_in_notebook(path: Path) -> list[str]:
    found = []
    for cell in json.loads(path.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            found += commands_in_markdown(source)
        elif cell["cell_type"] == "code":
            found += commands_in_python(source)
    return found


def documented_commands() -> list[tuple[str, str]]:
    """(file, command) for every documented command, in file order, without repeats per file."""
    pairs = []
    for name in [*MARKDOWN, *NOTEBOOKS]:
        path = ROOT / name
        found = (commands_in_notebook(path) if name.endswith(".ipynb")
                 else commands_in_markdown(path.read_text()))
        pairs += [(name, command) for command in dict.fromkeys(found)]
    return pairs


# --- checking one command ---------------------------------------------------------------------

def check_command(command: str) -> None:
    """Raise AssertionError, saying why, unless ``command`` is a valid minilepton command."""
    argv = _tokens(command)
    if not argv or argv[0] != "minilepton":
        raise AssertionError(f"not a minilepton command (unbalanced quotes?): {command}")
    argv = argv[1:]
    quiet = contextlib.redirect_stdout(io.StringIO())
    try:
        with quiet:
            args, extra = cli.build_parser().parse_known_args(argv)
        if extra:
            raise AssertionError(f"unrecognized arguments: {' '.join(extra)}")
        if args.command in ("train", "simulate"):
            cli.config_from_args(args)
        elif args.command == "bench":
            if args.name is None:
                raise AssertionError("bench needs a benchmark name")
            with quiet:
                bench.build_parser(args.name, parser_class=cli._Parser).parse_args(args.args)
    except SystemExit as exc:  # --help or --version: argparse prints and exits
        if exc.code not in (0, None):
            raise AssertionError(f"exit status {exc.code}") from None
    except (cli.UsageError, ValueError) as exc:
        raise AssertionError(str(exc)) from None


COMMANDS = documented_commands()


@pytest.mark.parametrize("where, command", COMMANDS, ids=[f"{f}: {c}" for f, c in COMMANDS])
def test_documented_command_parses(where, command):
    if command in EXPECTED_TO_FAIL:
        with pytest.raises(AssertionError):
            check_command(command)
        return
    problem = None
    try:
        check_command(command)
    except AssertionError as exc:
        problem = str(exc)
    if problem is not None:
        pytest.fail(f"{where}: `{command}`: {problem}", pytrace=False)


def test_the_documentation_has_commands_in_every_place_it_should():
    files = {where for where, _ in COMMANDS}
    assert {"README.md", "docs/training.md", "benchmarks/README.md"} <= files
    assert any(where.startswith("tutorials/") for where in files)
    assert len(COMMANDS) >= 50, len(COMMANDS)
    for command in EXPECTED_TO_FAIL:
        assert command in {c for _, c in COMMANDS}, f"{command!r} is no longer documented"


@pytest.mark.parametrize("command", [
    "minilepton train --no-such-flag",
    "minilepton train --hidden",
    "minilepton train --hidden 0",
    "minilepton train --batch-size 0",
    "minilepton train --link 5",
    "minilepton train --workers 2 --link carrier-pigeon",
    "minilepton train --workers 3 --dp 2",
    "minilepton train --compress topk:2",
    "minilepton train --epochs two",
    "minilepton example nope",
    "minilepton bench",
    "minilepton bench nope",
    "minilepton bench scaling --no-such-flag",
    "minilepton bench allreduce --rounds many",
    "minilepton trian",
    "minilepton train --lr 'unclosed",
])
def test_a_broken_command_is_caught(command):
    with pytest.raises(AssertionError):
        check_command(command)


def test_extraction_finds_every_written_form():
    markdown = (
        "Run `minilepton train --epochs 1` or `python -m minilepton example logistic`;\n"
        "`import minilepton as ml` and `minilepton/cli.py` are not commands.\n\n"
        "```bash\n"
        "pip install -e . && minilepton train --hidden 64 64   # two layers\n"
        "minilepton bench scaling --workers 1,2 \\\n    --rounds 3\n"
        "mpiexec -n 2 python -m minilepton train --workers 2\n"
        "```\n\n"
        "```console\n$ minilepton train --quiet\nminilepton: error: not a command\n```\n\n"
        "```python\nimport subprocess, sys\n"
        "subprocess.run([sys.executable, '-m', 'minilepton', 'train', '--tp', '2'])\n```\n")
    assert commands_in_markdown(markdown) == [
        "minilepton train --hidden 64 64",
        "minilepton bench scaling --workers 1,2 --rounds 3",
        "minilepton train --workers 2",
        "minilepton train --quiet",
        "minilepton train --tp 2",
        "minilepton train --epochs 1",
        "minilepton example logistic",
    ]
    code = "!minilepton train --dp 2\nsubprocess.run(['minilepton', 'train', '--pp', '2'])\n"
    assert commands_in_python(code) == ["minilepton train --dp 2", "minilepton train --pp 2"]


def test_hidden_takes_several_sizes_after_one_flag_or_the_flag_repeated():
    parse = cli.build_parser().parse_args
    assert cli.config_from_args(parse(["train", "--hidden", "256", "256", "256"])).hidden == \
        (256, 256, 256)
    assert cli.config_from_args(parse(["train", "--hidden", "256", "--hidden", "128"])).hidden == \
        (256, 128)
    assert cli.config_from_args(parse(["train", "--hidden", "64", "32", "--hidden", "16"])).hidden \
        == (64, 32, 16)
    assert cli.config_from_args(parse(["train"])).hidden == (128,)


def _subparsers():
    parser = cli.build_parser()
    choices = next(a for a in parser._actions if a.choices and "train" in a.choices).choices
    return {name: choices[name] for name in ("train", "example", "bench", "simulate", "calibrate")}


@pytest.mark.parametrize("name", ["train", "example", "bench", "simulate", "calibrate"])
def test_help_gives_every_flag_a_line_and_its_default(name):
    sub = _subparsers()[name]
    formatter = sub._get_formatter()
    for action in sub._actions:
        if not action.option_strings or action.help == "show this help message and exit":
            continue
        assert action.help, f"{action.option_strings[0]} has no help"
        assert "(default: " in formatter._get_help_string(action), action.option_strings[0]
    text = sub.format_help()
    if name == "train":
        assert "--sync-every" in text and "parameters are averaged" in " ".join(text.split())


def _slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("name", MARKDOWN)
def test_relative_links_point_at_files_and_headings_that_exist(name):
    path = ROOT / name
    text = path.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        assert linked.exists(), f"{name}: link to {target} (no such file)"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+\s+(.+)$", linked.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{name}: link to {target} (no heading)"


@pytest.mark.parametrize("name", [*MARKDOWN, *NOTEBOOKS])
def test_paths_in_the_documentation_exist(name):
    path = ROOT / name
    text = path.read_text()
    if name.endswith(".ipynb"):
        text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"]
                         if c["cell_type"] == "markdown")
    written = re.findall(r"`((?:minilepton|tests|benchmarks|tutorials|docs)/[\w/.\-]*)`", text)
    missing = [p for p in written if not (ROOT / p).exists()]
    assert not missing, f"{name} names paths that do not exist: {missing}"
