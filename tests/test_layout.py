"""Project-shape invariants: BUILD covers every module/test/binary; layering rules hold.

DESIGN.md: models, sinkhorn, losses, data and optim import only TF/Keras/NumPy (never
tf.distribute, never train/eval/bin); export never imports train/.
"""

import ast
import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _build_srcs(rule):
    text = open(os.path.join(ROOT, "BUILD")).read()
    srcs = set()
    for block in re.findall(rf"^{rule}\((.*?)^\)", text, flags=re.S | re.M):
        srcs.update(re.findall(r'"((?:seer_tf|tests)/[^"]+\.py)"', block))
    for block in re.findall(rf"^{rule}\((.*?)\)$", text, flags=re.M):  # one-line rules
        srcs.update(re.findall(r'"((?:seer_tf|tests)/[^"]+\.py)"', block))
    return srcs


def test_every_module_test_and_binary_has_a_bazel_target():
    libs, tests, bins = _build_srcs("py_library"), _build_srcs("py_test"), _build_srcs("py_binary")
    modules = _rel(glob.glob(os.path.join(ROOT, "seer_tf", "**", "*.py"), recursive=True))
    binaries = [m for m in modules if m.startswith("seer_tf/bin/") and not m.endswith("__init__.py")]
    missing_lib = [m for m in modules if m not in libs and m not in binaries]
    assert not missing_lib, f"modules without a py_library: {missing_lib}"
    assert not [b for b in binaries if b not in bins], "entry points without a py_binary"
    test_files = _rel(glob.glob(os.path.join(ROOT, "tests", "test_*.py")))
    assert not [t for t in test_files if t not in tests], "test files without a py_test"


PURE = ["seer_tf/models", "seer_tf/sinkhorn.py", "seer_tf/losses", "seer_tf/data", "seer_tf/optim"]
FORBIDDEN_MODULES = ("seer_tf.distribute", "seer_tf.train", "seer_tf.eval", "seer_tf.bin",
                     "tensorflow.distribute", "tensorflow.python.distribute")


def _violations(path):
    """Imports of forbidden modules and uses of `tf.distribute` in code (docstrings may say it)."""
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif (isinstance(node, ast.Attribute) and node.attr == "distribute"
              and isinstance(node.value, ast.Name) and node.value.id == "tf"):
            yield f"{node.lineno}: tf.distribute"
        for name in names:
            if name.startswith(FORBIDDEN_MODULES):
                yield f"{node.lineno}: import {name}"


def test_numerical_code_does_not_touch_tf_distribute():
    offenders = []
    for root in PURE:
        path = os.path.join(ROOT, root)
        files = [path] if path.endswith(".py") else glob.glob(os.path.join(path, "**", "*.py"), recursive=True)
        for f in files:
            offenders += [f"{os.path.relpath(f, ROOT)}:{v}" for v in _violations(f)]
    assert not offenders, offenders


def test_layering_check_catches_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import tensorflow as tf\nfrom seer_tf import distribute\nx = tf.distribute.get_strategy()\n")
    assert len(list(_violations(str(bad)))) == 2


def test_no_addons_dependency():
    """TF Addons is end-of-life and breaks with Keras 3: never a dependency or an import."""
    package = "tensorflow" + "-addons"  # spelled in two parts so this file does not match itself
    module = "tensorflow" + "_addons"
    for f in glob.glob(os.path.join(ROOT, "seer_tf", "**", "*.py"), recursive=True) + [
            os.path.join(ROOT, "requirements.txt"), os.path.join(ROOT, "pyproject.toml")]:
        text = open(f).read()
        assert package not in text and module not in text, f
