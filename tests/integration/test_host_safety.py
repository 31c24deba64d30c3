"""No local user can block, redirect or poison root's runs (issue #12): each attack runs as uid 65534 (setpriv),
then root's real module run either succeeds or refuses with a message that names the path and the problem, and
afterwards the victim files, every pin under /sys/fs/bpf and the kernel's prog/map/link lists (our objects) are
exactly as before.

  lock       /run/lock is 1777 and flock works on a read-only descriptor: the lock now lives in root's private
             /run/hypermesh-ebpf/ (0700), where the attacker can neither open, create nor link anything
  pin root   bpffs is 1777 here: a pin root, a name under it, or a link planted there before root is refused
             before anything is read, detached or unlinked; a link inside a tree root removes is refused whole
  dest       a file a user prepared at ebpf_map_info's dest is replaced by root's own 0644 file (a later src reads
             root's entries); a link or a FIFO there is refused
  role       the module_utils root runs at boot are installed root's and go-w from a 0777 checkout, and installed
             again when a file there became writable by others
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid

import pytest

from tests.conftest import TOP, ansible_module, needs_root
from test_ebpf_program_common import kernel_ids, kname, leaked, mounts, private_object

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import lock
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state

pytestmark = needs_root

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
OURS = (kname("xdp_count"),)
OUR_MAPS = (kname("xdp_stats"),)


def counter_object():
    """xdp_counter with our own names (hmt_xdp_count, hmt_xdp_stats): the kernel lists tell our objects apart."""
    return private_object("xdp_counter", ["xdp_count", "xdp_stats"])


def as_nobody(*cmd):
    return subprocess.run(NOBODY + list(cmd), capture_output=True, text=True, check=False)


def tree(path):
    """{relative path: (type, uid, mode, content or link target)} of everything under path (links not followed)."""
    out = {}
    if not os.path.lexists(path):
        return out
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                what = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode) and not p.startswith("/sys/fs/bpf"):
                with open(p, "rb") as f:
                    what = ("file", f.read())
            else:
                what = (stat.S_IFMT(st.st_mode), None)
            out[os.path.relpath(p, path)] = (what, st.st_uid, stat.S_IMODE(st.st_mode), st.st_ino)
    return out


class Host(object):
    """What must be exactly as before: the pins under /sys/fs/bpf, the victim files, our kernel objects."""

    def __init__(self, *victims):
        self.victims = victims
        self.ids = kernel_ids()
        self.pins = tree("/sys/fs/bpf")
        self.files = [tree(v) for v in victims]
        self.records = tree(os.path.join(layout.STATE_DIR, layout.RECORDS))

    def assert_unchanged(self):
        assert tree("/sys/fs/bpf") == self.pins
        assert [tree(v) for v in self.victims] == self.files
        assert tree(os.path.join(layout.STATE_DIR, layout.RECORDS)) == self.records
        assert leaked(self.ids, OURS, OUR_MAPS) == {"prog": set(), "map": set(), "link": set()}


def program(args):
    return ansible_module("ebpf_program", args)


@pytest.fixture(scope="module", autouse=True)
def bpffs():
    mounts()


@pytest.fixture
def victim(tmp_path):
    """A directory of files root must never delete (0755, readable to the attacker)."""
    os.chmod(str(tmp_path), 0o755)
    d = tmp_path / "victim"
    (d / "sub").mkdir(parents=True)
    (d / "keep.txt").write_text("root's data\n")
    (d / "sub" / "deep.txt").write_text("more\n")
    os.chmod(str(d), 0o755)
    return str(d)


@pytest.fixture
def fresh_root():
    """A pin root path under /sys/fs/bpf that nobody has made yet; removed afterwards (whoever made it)."""
    path = "/sys/fs/bpf/hm-safe-%s" % uuid.uuid4().hex[:8]
    yield path
    if os.path.islink(path):
        os.unlink(path)
    elif os.path.isdir(path):
        for name in os.listdir(path):
            if program_state.read_record(name):
                ansible_module("ebpf_program", {"name": name, "state": "absent", "pin_root": path})
        shutil.rmtree(path, ignore_errors=True)


def refused(result, *needles):
    assert result.get("failed"), result
    for needle in needles:
        assert needle in result["msg"], result["msg"]
    assert "refusing to use it" in result["msg"], result["msg"]


# ---- defect 1: the lock -------------------------------------------------------------------------------------

def test_a_user_cannot_hold_or_plant_the_lock_and_root_runs_at_once(fresh_root):
    assert os.path.dirname(layout.LOCK_PATH) == layout.RUN_DIR != "/run/lock"
    # the attack of the issue: hold a shared flock on the old path (0644 in the 1777 /run/lock), a planted file
    # or a link there are the same route; none of them is what root takes any more
    old = "/run/lock/hypermesh-ebpf.lock"
    with lock.HostLock():
        pass  # root's directory exists (as after any run)
    holders = []
    try:
        for path in (old, layout.LOCK_PATH):
            holders.append(subprocess.Popen(NOBODY + ["flock", "-s", path, "sleep", "infinity"],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True))
        time.sleep(0.5)
        assert holders[0].poll() is None, "the attack on the old path is not running"
        assert holders[1].poll() not in (None, 0), "uid 65534 could open root's lock file"
        assert "Permission denied" in holders[1].stderr.read().decode()
        for attempt in (["touch", layout.LOCK_PATH + ".planted"], ["ln", "-s", "/etc/passwd", layout.RUN_DIR + "/x"],
                        ["mkdir", "/run/hypermesh-ebpf-planted"]):
            assert as_nobody(*attempt).returncode != 0, attempt
        st = os.lstat(layout.RUN_DIR)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700
        contents = sorted(os.listdir(layout.RUN_DIR))

        host = Host()
        start = time.monotonic()
        r = program({"name": "lockrun", "object": counter_object(), "state": "loaded", "pin_root": fresh_root})
        assert not r.get("failed") and r["changed"], r
        r = program({"name": "lockrun", "state": "absent", "pin_root": fresh_root})
        assert not r.get("failed") and r["changed"], r
        took = time.monotonic() - start
        assert took < 60, "root's runs waited %.0f s while uid 65534 held the old lock" % took
        os.rmdir(fresh_root)
        host.assert_unchanged()
        assert sorted(os.listdir(layout.RUN_DIR)) == contents
    finally:
        for proc in holders:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---- defect 2: symlinks and foreign entries under the pin root ----------------------------------------------

def test_a_pin_root_planted_by_a_user_is_refused_and_the_link_target_kept(fresh_root, victim):
    """The issue's attack: `ln -s /some/dir <pin_root>/x`, then root's `name=x state=absent` deleted /some/dir."""
    assert as_nobody("mkdir", fresh_root).returncode == 0  # bpffs is 1777: anyone can make the pin root first
    assert as_nobody("ln", "-s", victim, os.path.join(fresh_root, "x")).returncode == 0
    host = Host(victim, fresh_root)
    r = program({"name": "x", "state": "absent", "pin_root": fresh_root})
    refused(r, fresh_root + " is owned by uid 65534")
    r = program({"name": "x", "object": counter_object(), "state": "loaded", "pin_root": fresh_root})
    refused(r, fresh_root + " is owned by uid 65534")
    host.assert_unchanged()


def test_a_pin_root_that_is_a_link_to_roots_real_one_is_refused(fresh_root, victim):
    real = fresh_root + "-real"
    try:
        r = program({"name": "kept", "object": counter_object(), "state": "loaded", "pin_root": real})
        assert not r.get("failed"), r
        link = fresh_root
        assert as_nobody("ln", "-s", real, link).returncode == 0
        host = Host(victim, real)
        r = program({"name": "kept", "state": "absent", "pin_root": link})
        refused(r, link + " is a symbolic link")
        host.assert_unchanged()
        assert os.path.exists(os.path.join(real, "kept", "prog"))
    finally:
        r = program({"name": "kept", "state": "absent", "pin_root": real})
        assert not r.get("failed"), r
        if os.path.isdir(real):
            os.rmdir(real)


def test_a_pin_root_others_can_write_is_refused(fresh_root, victim):
    os.mkdir(fresh_root, 0o700)
    os.chmod(fresh_root, 0o1777)  # root's own, but opened to everyone (by mistake)
    assert as_nobody("ln", "-s", victim, os.path.join(fresh_root, "x")).returncode == 0
    host = Host(victim, fresh_root)
    r = program({"name": "x", "state": "absent", "pin_root": fresh_root})
    refused(r, fresh_root + " is writable by group or others (mode 1777)")
    host.assert_unchanged()


def test_a_user_owned_dir_above_the_pin_root_is_refused(fresh_root, victim):
    assert as_nobody("mkdir", fresh_root).returncode == 0
    below = os.path.join(fresh_root, "hypermesh")
    assert as_nobody("mkdir", below).returncode == 0
    host = Host(victim, fresh_root)
    r = program({"name": "x", "object": counter_object(), "state": "loaded", "pin_root": below})
    refused(r, fresh_root + " is owned by uid 65534")
    host.assert_unchanged()


def test_a_link_as_the_name_or_inside_its_tree_is_refused_and_nothing_detached(fresh_root, victim):
    r = program({"name": "tree", "object": counter_object(), "state": "loaded", "pin_root": fresh_root})
    assert not r.get("failed"), r
    try:
        os.symlink(victim, os.path.join(fresh_root, "x"))  # a name that is a link (to a directory root keeps)
        host = Host(victim, fresh_root)
        r = program({"name": "x", "state": "absent", "pin_root": fresh_root})
        refused(r, os.path.join(fresh_root, "x") + " is a symbolic link")
        host.assert_unchanged()
        os.unlink(os.path.join(fresh_root, "x"))

        planted = os.path.join(fresh_root, "tree", "planted")
        os.symlink(victim, planted)  # something inside the tree root removes
        host = Host(victim, fresh_root)
        r = program({"name": "tree", "state": "absent", "pin_root": fresh_root})
        refused(r, planted + " is a symbolic link")
        host.assert_unchanged()  # the program is still pinned, nothing under victim went
        os.unlink(planted)
    finally:
        r = program({"name": "tree", "state": "absent", "pin_root": fresh_root})
        assert not r.get("failed"), r
    assert not os.path.exists(os.path.join(fresh_root, "tree"))


# ---- the object root loads -----------------------------------------------------------------------------------

@pytest.mark.parametrize("planted", ["their file", "root's file in their directory"])
def test_an_object_a_user_planted_or_can_change_is_refused_and_nothing_loaded(tmp_path, fresh_root, planted):
    """A user who can write the object (or the directory it is in) decides what root loads into the kernel; a
    link would let them point root's run at any other file (tests/unit: program_spec.read_object). Refused, with
    the path and what is wrong."""
    os.chmod(str(tmp_path), 0o755)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(str(theirs), 65534, 65534)
    obj = str(theirs / "counter.bpf.o")
    shutil.copy(counter_object(), str(tmp_path / "roots.bpf.o"))
    shutil.copy(counter_object(), obj)
    if planted == "their file":
        os.chown(obj, 65534, 65534)
    host = Host(str(tmp_path))
    r = program({"name": "planted", "object": obj, "state": "loaded", "pin_root": fresh_root})
    refused(r, "object " + str(theirs), "is owned by uid 65534")
    host.assert_unchanged()
    r = program({"name": "planted", "object": str(tmp_path / "roots.bpf.o"), "state": "loaded",
                 "pin_root": fresh_root})
    assert r.get("changed") and not r.get("failed"), r  # the same bytes from root's own file load
    assert program({"name": "planted", "state": "absent", "pin_root": fresh_root}).get("changed")


# ---- defect 6: files root writes (dest) -------------------------------------------------------------------

@pytest.fixture
def loaded_counter(fresh_root):
    r = program({"name": "dumped", "object": counter_object(), "state": "loaded", "pin_root": fresh_root})
    assert not r.get("failed"), r
    yield {"name": "dumped", "map": kname("xdp_stats"), "pin_root": fresh_root}
    r = program({"name": "dumped", "state": "absent", "pin_root": fresh_root})
    assert not r.get("failed"), r


@pytest.fixture
def sticky_dir():
    """A root-owned 1777 directory like /tmp, where the attacker can prepare files."""
    d = tempfile.mkdtemp(prefix="hm-safe-dest-")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d)


def _map_args(counter):
    return {"path": os.path.join(counter["pin_root"], counter["name"], "maps", counter["map"])}


def test_a_dest_a_user_prepared_becomes_roots_own_0644_file(loaded_counter, sticky_dir):
    dest = os.path.join(sticky_dir, "dump.json")
    assert as_nobody("sh", "-c", "umask 0; printf '[{\"key\": 0, \"value\": 0}]' > %s" % dest).returncode == 0
    os.chmod(dest, 0o666)  # (as the user made it)
    assert os.stat(dest).st_uid == 65534
    args = dict(_map_args(loaded_counter), dest=dest)
    r = ansible_module("ebpf_map_info", args)
    assert not r.get("failed") and r["changed"], r
    st = os.lstat(dest)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
    dumped = open(dest).read()
    # the user can no longer change what a later `src` reads: no write, and the sticky dir keeps it root's
    assert as_nobody("sh", "-c", "echo '[]' > %s" % dest).returncode != 0
    assert as_nobody("rm", "-f", dest).returncode != 0
    assert as_nobody("mv", dest, dest + ".x").returncode != 0
    assert open(dest).read() == dumped
    r = ansible_module("ebpf_map_info", args)
    assert not r.get("failed") and not r["changed"], r


def test_a_dest_that_is_a_link_or_a_fifo_is_refused(loaded_counter, sticky_dir, victim):
    target = os.path.join(victim, "keep.txt")
    link = os.path.join(sticky_dir, "link.json")
    assert as_nobody("ln", "-s", target, link).returncode == 0
    fifo = os.path.join(sticky_dir, "fifo.json")
    assert as_nobody("mkfifo", fifo).returncode == 0
    host = Host(victim, sticky_dir)
    r = ansible_module("ebpf_map_info", dict(_map_args(loaded_counter), dest=link))
    assert r.get("failed") and "dest %s is a symbolic link" % link in r["msg"], r
    start = time.monotonic()
    r = ansible_module("ebpf_map_info", dict(_map_args(loaded_counter), dest=fifo))
    assert r.get("failed") and "dest %s is not a regular file" % fifo in r["msg"], r
    assert time.monotonic() - start < 30
    host.assert_unchanged()


# ---- defect 6: the module_utils root runs at boot -----------------------------------------------------------

PERSIST_PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: hypermesh.ebpf.ebpf_programs
      vars:
        ebpf_programs: []
"""


def _copy_collection(dest):
    """The collection's working tree as a checkout with every file and directory 0777 (owned by uid 65534)."""
    top = os.path.join(dest, "ansible_collections", "hypermesh", "ebpf")
    os.makedirs(top)
    for part in ("galaxy.yml", "meta", "plugins", "roles"):
        src = os.path.join(TOP, part)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(top, part), ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(src, os.path.join(top, part))
    for root, dirs, files in os.walk(dest):
        for name in dirs + files + [""]:
            p = os.path.join(root, name)
            os.chmod(p, 0o777)
            os.lchown(p, 65534, 65534)
    return top


def _persist(tmp, collections):
    play = os.path.join(tmp, "persist.yml")
    with open(play, "w") as f:
        f.write(PERSIST_PLAY)
    cmd = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", "ansible_python_interpreter=" + sys.executable]
    cmd += ["-e", "ebpf_programs_pin_root=/sys/fs/bpf/hm-safety-%d" % os.getpid()]  # no programs: nothing pinned
    for key in ("lib", "etc", "state"):
        cmd += ["-e", "ebpf_programs_%s_dir=%s" % ({"lib": "lib", "etc": "config", "state": "state"}[key],
                                                   os.path.join(tmp, key))]
    cmd.append(play)
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=collections,
               ANSIBLE_NOCOLOR="1", LANG="C")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _unsafe(lib):
    """Everything under lib that is not root's or that group/others can write."""
    out = []
    for root, dirs, files in os.walk(lib):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if st.st_uid != 0 or st.st_mode & 0o022 or stat.S_ISLNK(st.st_mode):
                out.append((os.path.join(root, name), oct(st.st_mode), st.st_uid))
    return out


def test_module_utils_from_a_0777_checkout_are_installed_roots_and_go_w(tmp_path):
    tmp = str(tmp_path)
    os.mkdir(os.path.join(tmp, "etc"), 0o755)
    coll = os.path.join(tmp, "collections")
    _copy_collection(coll)
    _persist(tmp, coll)
    lib = os.path.join(tmp, "lib", "ansible_collections", "hypermesh", "ebpf", "plugins", "module_utils")
    assert os.path.exists(os.path.join(lib, "_state", "reapply.py")) and os.path.exists(os.path.join(lib, "_common", "lock.py"))
    assert _unsafe(os.path.join(tmp, "lib")) == []

    # a file (same content) or the directory made writable by others: installed again, root's and go-w
    victim = os.path.join(lib, "_common", "lock.py")
    os.chmod(victim, 0o666)
    _persist(tmp, coll)
    assert _unsafe(os.path.join(tmp, "lib")) == []
    os.chmod(lib, 0o777)
    _persist(tmp, coll)
    assert _unsafe(os.path.join(tmp, "lib")) == []
