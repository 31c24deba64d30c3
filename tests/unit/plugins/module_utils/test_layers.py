"""The layers of plugins/module_utils/: each package imports only packages below it (docs/DESIGN.md draws them).

  _common < _kernel < _host < _program < _maps < _state

Read from the source (every import statement, at the top or inside a function), so a new upward import fails
here, naming the file and the import.
"""
import ast
import os

from tests.conftest import TOP

LAYERS = ["_common", "_kernel", "_host", "_program", "_maps", "_state"]
MU = "ansible_collections.hypermesh.ebpf.plugins.module_utils"
ROOT = os.path.join(TOP, "plugins", "module_utils")


def _imports(path):
    """The module_utils packages a file imports: [(line, package)]."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module + "." + a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith(MU + "."):
                out.append((node.lineno, name[len(MU) + 1:].split(".")[0]))
    return out


def test_the_packages_are_the_layers():
    found = sorted(d for d in os.listdir(ROOT) if os.path.isdir(os.path.join(ROOT, d)) and d != "__pycache__")
    assert found == sorted(LAYERS)
    assert [f for f in os.listdir(ROOT) if f.endswith(".py")] == []  # no file outside a layer


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for layer in LAYERS:
        for name in sorted(os.listdir(os.path.join(ROOT, layer))):
            if not name.endswith(".py"):
                continue
            for line, pkg in _imports(os.path.join(ROOT, layer, name)):
                if pkg not in LAYERS or LAYERS.index(pkg) > LAYERS.index(layer):
                    wrong.append("%s/%s:%d imports %s" % (layer, name, line, pkg))
    assert wrong == []


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from %s._state import state_engine\n" % MU)
    assert _imports(str(bad)) == [(2, "_state")]
