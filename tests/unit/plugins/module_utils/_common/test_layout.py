"""layout.py holds every default path and reserved name; no other file under plugins/ writes one again.

The scan reads each plugins/ source with ast: docstrings and the module documentation (DOCUMENTATION, EXAMPLES,
RETURN, which cannot import) may name the paths in words; any other string constant that holds one fails, as does
an os.path.join(...) with a pin or record name written out ("prog", "link", "maps", "programs", "_shared")."""
import ast
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout

TOP = os.path.abspath(os.path.join(os.path.dirname(__file__), *[".."] * 5))
PLUGINS = os.path.join(TOP, "plugins")
LAYOUT = os.path.join(PLUGINS, "module_utils", "_common", "layout.py")
DOC_NAMES = ("DOCUMENTATION", "EXAMPLES", "RETURN")

# the literals only layout.py may hold (a string constant containing one of these is a duplicate)
PATHS = ("/sys/fs/bpf/hypermesh", "/var/lib/hypermesh-ebpf", "/run/hypermesh-ebpf", "/etc/hypermesh-ebpf",
         "/usr/lib/hypermesh-ebpf", "/var/cache/hypermesh-ebpf", "features.json", "desired.json",
         "hypermesh-ebpf-reapply.service", "/etc/systemd/system", "/sys/bus/event_source/devices/uprobe")
NAMES = (layout.SHARED,)  # a constant equal to one of these
PIN_NAMES = (layout.PIN_PROG, layout.PIN_LINK, layout.PIN_MAPS, layout.RECORDS, layout.SHARED)


def sources():
    for root, dirs, files in os.walk(PLUGINS):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(root, f)


def _doc_nodes(tree):
    """The string nodes allowed to name paths in words: docstrings and the module documentation."""
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                allowed.add(id(body[0].value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in DOC_NAMES for t in node.targets):
            allowed.update(id(n) for n in ast.walk(node.value))
    return allowed


def _is_join(call):
    f = call.func
    return (isinstance(f, ast.Attribute) and f.attr == "join" and isinstance(f.value, ast.Attribute)
            and f.value.attr == "path" and isinstance(f.value.value, ast.Name) and f.value.value.id == "os")


def duplicates(path, text):
    """[(line, what)] of the layout literals written in `text` (the source of `path`) outside docs."""
    tree = ast.parse(text, path)
    allowed = _doc_nodes(tree)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in allowed:
            hits = [p for p in PATHS if p in node.value] + [n for n in NAMES if node.value == n]
            out.extend((node.lineno, h) for h in hits)
        if isinstance(node, ast.Call) and _is_join(node):
            out.extend((node.lineno, "os.path.join(..., %r)" % a.value) for a in node.args
                       if isinstance(a, ast.Constant) and a.value in PIN_NAMES)
    return out


def test_no_layout_literal_outside_layout():
    found = []
    for path in sources():
        if path == LAYOUT:
            continue
        with open(path) as f:
            found.extend("%s:%d: %s" % (os.path.relpath(path, TOP), line, what)
                         for line, what in duplicates(path, f.read()))
    assert found == [], "written again outside _common/layout.py:\n" + "\n".join(found)


def test_the_scan_finds_a_duplicate():
    """The scan itself: each kind of duplicate is found, docs are not."""
    src = '''"""Pinned under /sys/fs/bpf/hypermesh (a docstring may say so)."""
import os
DOCUMENTATION = """default: /var/lib/hypermesh-ebpf"""
ROOT = "/sys/fs/bpf/hypermesh"
SHARED = "_shared"
def f(d):
    """In /run/hypermesh-ebpf/features.json."""
    return os.path.join(d, "prog"), os.path.join(d, "x", "maps", "m"), "unit %s" % "hypermesh-ebpf-reapply.service"
'''
    assert sorted(duplicates("x.py", src)) == [(4, "/sys/fs/bpf/hypermesh"), (5, "_shared"),
                                               (8, "hypermesh-ebpf-reapply.service"),
                                               (8, "os.path.join(..., 'maps')"), (8, "os.path.join(..., 'prog')")]


def _of_layout(value, known=()):
    """True for layout.X, or a string sum of layout names, constants and aliases already `known` (layout.A + "/"
    + NAME). A container of them (program_spec.RESERVED = (layout.SHARED,)) names a new thing, not a copy."""
    if isinstance(value, ast.Attribute):
        return isinstance(value.value, ast.Name) and value.value.id == "layout"
    if isinstance(value, ast.Name):
        return value.id in known
    if isinstance(value, ast.BinOp):
        leaves = (value.left, value.right)
        return all(_of_layout(v, known) or isinstance(v, ast.Constant) for v in leaves) and \
            any(_of_layout(v, known) for v in leaves)
    return False


def aliases(path, text):
    """[(line, name)] of the module-level copies of layout names in `text`: NAME = layout.X (or an expression of
    layout names only, such as layout.A + "/" + layout.B) and `from ..._common.layout import X`. A caller writes
    layout.X where it needs it, so that a reader finds one name for one path."""
    out = []
    for node in ast.parse(text, path).body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("_common.layout"):
            out.extend((node.lineno, a.asname or a.name) for a in node.names)
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        if _of_layout(node.value, [name for _line, name in out]):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.extend((node.lineno, getattr(t, "id", ast.dump(t))) for t in targets)
    return out


def test_no_module_level_alias_of_a_layout_name():
    found = []
    for path in sources():
        if path == LAYOUT:
            continue
        with open(path) as f:
            found.extend("%s:%d: %s" % (os.path.relpath(path, TOP), line, name) for line, name in aliases(path, f.read()))
    assert found == [], "a copy of a layout name (write layout.X where it is used):\n" + "\n".join(found)


def test_the_alias_scan_finds_an_alias():
    src = '''from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common.layout import RUN_DIR
DEFAULT_PIN_ROOT = layout.PIN_ROOT
UNIT_PATH = layout.UNIT_DIR + "/" + layout.REAPPLY_UNIT
OTHER = os.path.join(layout.RUN_DIR, "x")
RESERVED = (layout.SHARED,)
NAMED = LOCAL = layout.LOCK_PATH
UNIT = layout.UNIT_DIR + "/" + NAMED
NOT_ONE = OTHER + "/x"
def f(pin_root=layout.PIN_ROOT):
    root = layout.PIN_ROOT
    return root
'''
    assert aliases("x.py", src) == [(2, "RUN_DIR"), (3, "DEFAULT_PIN_ROOT"), (4, "UNIT_PATH"), (7, "NAMED"),
                                    (7, "LOCAL"), (8, "UNIT")]


def test_layout_values():
    """The defaults the docs and the roles name (a change here is a change of the host layout)."""
    assert layout.PIN_ROOT == "/sys/fs/bpf/hypermesh" and layout.SHARED == "_shared"
    assert (layout.PIN_PROG, layout.PIN_LINK, layout.PIN_MAPS) == ("prog", "link", "maps")
    assert layout.STATE_DIR == "/var/lib/hypermesh-ebpf" and layout.OBJECTS_DIR == layout.STATE_DIR + "/objects"
    assert layout.RECORDS == "programs" and layout.DESIRED == "/etc/hypermesh-ebpf/desired.json"
    assert layout.LOCK_PATH == "/run/hypermesh-ebpf/lock" and layout.FEATURES_MEMO == "/run/hypermesh-ebpf/features.json"
    assert layout.LIB_DIR == "/usr/lib/hypermesh-ebpf" and layout.PYCACHE_ROOT == "/var/cache/hypermesh-ebpf/pycache"
    assert layout.UNIT_DIR + "/" + layout.REAPPLY_UNIT == "/etc/systemd/system/hypermesh-ebpf-reapply.service"
    assert layout.REAPPLY_UNIT_PATH == layout.UNIT_DIR + "/" + layout.REAPPLY_UNIT
