"""The repository stands on its own and its documents say true things.

Rules (each a test below):
  * README.md is the user guide: under 300 lines, the CI command verbatim, measured history in
    docs/benchmarks.md and the design in docs/design.md.
  * Nothing points outside the repository (the parent folder's design notes and bench scripts):
    no "../shared" / "DESIGN.md" anywhere in code, tests, tools, BUILD or docs.
  * Code and comments carry no tracker numbers (an issue and its number) and no dates; measured figures
    with their dates live in docs/benchmarks.md.
  * No absolute paths of one machine (home folders, /tmp, a workspace) in any tracked text file:
    usage lines say WORKDIR, DIR, DATA_DIR. A test that must spell one writes
    `# machine-path-ok` on that line.
  * Every file path and every command-line flag the README and docs mention exists.
  * benchmarks/ is outside the installed package, and seer_tf/bin/ holds user commands only.
"""

import ast
import os
import re

from benchmarks import run as benchmark_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE_DIRS = ("seer_tf", "experiments", "tools", "tests", "benchmarks")
TOP_FILES = ("BUILD", "README.md", "pyproject.toml", "requirements.txt", "WORKSPACE", "pytest.ini")
TEXT_SUFFIXES = (".py", ".cc", ".h", ".sh", ".md", ".toml", ".txt", ".ini", ".cfg", ".json")
CODE_SUFFIXES = (".py", ".cc", ".h", ".sh")
CI_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -e . && "
              ".venv/bin/python -m pytest")


def _files(dirs=CODE_DIRS + ("docs",), suffixes=TEXT_SUFFIXES, top=TOP_FILES):
    out = [os.path.join(ROOT, f) for f in top if os.path.exists(os.path.join(ROOT, f))]
    for d in dirs:
        for folder, subdirs, names in os.walk(os.path.join(ROOT, d)):
            subdirs[:] = [s for s in subdirs if s not in ("__pycache__", "testdata")]
            out += [os.path.join(folder, n) for n in names if n.endswith(suffixes)]
    return sorted(out)


def _offending_lines(pattern, files, flags=0):
    regex = re.compile(pattern, flags)
    found = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if regex.search(line) and "machine-path-ok" not in line:
                    found.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()[:100]}")
    return found


def test_readme_is_a_short_user_guide_with_the_ci_command():
    text = open(os.path.join(ROOT, "README.md")).read()
    assert len(text.splitlines()) < 300
    assert text.splitlines().count("    " + CI_COMMAND) == 1
    for doc in ("docs/design.md", "docs/benchmarks.md"):
        assert os.path.exists(os.path.join(ROOT, doc)) and doc in text


def test_nothing_points_outside_the_repository():
    outside = "../" + "shared|" + "shared/|DESIGN" + r"\.md"
    assert not _offending_lines(outside, [f for f in _files()
                                          if not f.endswith("test_layout_docs.py")])


def test_no_tracker_numbers_or_dates_in_code():
    files = _files(CODE_DIRS, CODE_SUFFIXES, top=("BUILD",))
    assert not _offending_lines(r"\bissues? #?\d+", files, re.IGNORECASE)
    assert not _offending_lines(r"\b20\d\d-[01]\d-[0-3]\d\b", files)


def test_no_absolute_machine_paths():
    machine = r"(?<![\w.~])/(root|home|tmp|work|Users|mnt)/|\b[A-Z]:\\\\Users"
    assert not _offending_lines(machine, _files())


def test_the_rule_catches_a_machine_path(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('"""python x.py --workdir=/' + 'tmp/run"""\nok = "~/.cache/x"\n')
    assert len(_offending_lines(r"(?<![\w.~])/(root|home|tmp|work|Users|mnt)/", [str(bad)])) == 1


def _doc_texts():
    docs = [os.path.join(ROOT, "README.md")] + _files(("docs",), (".md",), top=())
    return {os.path.relpath(p, ROOT): open(p).read() for p in docs}


def test_every_path_the_docs_name_exists():
    path = re.compile(r"\b(?:seer_tf|experiments|benchmarks|tools|tests|docs)/[\w/.-]*\w")
    missing = sorted({f"{doc}: {p}" for doc, text in _doc_texts().items()
                      for p in path.findall(text) if not os.path.exists(os.path.join(ROOT, p))})
    assert not missing


def _commands(text):
    """Each documented command line (backslash continuations joined)."""
    lines = text.replace("\\\n", " ").splitlines()
    return [ln.strip() for ln in lines if ln.startswith("    ") and "python" in ln]


def _absl_flags(binary):
    source = open(os.path.join(ROOT, "seer_tf", "bin", f"{binary}.py")).read()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    return names | {"help", "helpshort", "helpfull"}


def _unknown_flags(cmd):
    """Flags of a documented seer_tf.bin / benchmarks.run command that the program lacks."""
    given = {f.split("=")[0].split(".")[0] for f in re.findall(r"--([\w.]+)", cmd)}
    binary = re.search(r"-m seer_tf\.bin\.(\w+)", cmd)
    if binary:
        return given - _absl_flags(binary.group(1))
    if "benchmarks.run" in cmd or "benchmarks/run.py" in cmd:
        what = re.search(r"--what[= ](\w+)", cmd)
        parser = benchmark_run.build_parser(what.group(1) if what else None)
        return given - {a.dest for a in parser._actions} - {"no_peer", "nopeer"}
    return set()


def test_every_documented_flag_exists():
    unknown = [f"{doc}: {sorted(_unknown_flags(cmd))} in {cmd[:60]}"
               for doc, text in _doc_texts().items() for cmd in _commands(text)
               if _unknown_flags(cmd)]
    assert not unknown
    readme = _commands(_doc_texts()["README.md"])
    assert sum("seer_tf.bin." in cmd for cmd in readme) >= 10  # the check saw the commands


def test_the_flag_rule_catches_an_unknown_flag():
    assert _unknown_flags("python -m seer_tf.bin.export --workdir=W --output=O --bogus=1") == {
        "bogus"}
    assert _unknown_flags("python -m benchmarks.run --what=memory --remat_modes=none") == set()
    assert _unknown_flags("python -m benchmarks.run --what=sinkhorn --remat_modes=none") == {
        "remat_modes"}


def test_benchmarks_are_not_installed_and_bin_holds_user_commands():
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    include = re.search(r"include\s*=\s*\[(.*?)\]", pyproject).group(1)
    assert "seer_tf" in include and "benchmarks" not in include
    commands = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "seer_tf", "bin"))
                      if f.endswith(".py") and f != "__init__.py")
    assert not [c for c in commands if c.startswith("benchmark") or c == "peers"]
    build = open(os.path.join(ROOT, "BUILD")).read()
    modules = [os.path.join("benchmarks", f) for f in os.listdir(os.path.join(ROOT, "benchmarks"))
               if f.endswith(".py")]
    assert not [m for m in modules if f'"{m}"' not in build], "benchmarks without a target"
    for name in benchmark_run.BENCHMARKS.values():  # the table names importable modules
        assert os.path.exists(os.path.join(ROOT, *name.split(".")) + ".py")


def test_peer_scripts_need_no_repository_imports():
    """The peers run in a torch interpreter that may not have seer_tf or TensorFlow."""
    peers = os.path.join(ROOT, "benchmarks", "peers")
    for name in os.listdir(peers):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(peers, name)).read())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names}
        imported |= {n.module.split(".")[0] for n in ast.walk(tree)
                     if isinstance(n, ast.ImportFrom) and n.module}
        assert not imported & {"seer_tf", "benchmarks", "tensorflow", "keras"}, name
