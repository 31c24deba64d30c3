# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The lifecycle of one managed program: decide (in sync or not), converge (load, pin, attach, swap, record),
remove, with rollback of everything a failed run created and a layout a killed run leaves adoptable.

Order of a converge, chosen so a SIGKILL at any point leaves nothing the next run cannot adopt or clean up:
  journal   the record gets `pending` = what this run is about to do (so the next run knows the attach point
            even if it never learns more)
  load      libbpf loads the object (fds only: a kill here frees everything, the kernel closes the fds)
  pin       prog and maps pinned under <name>/stage_<pid>/ (a leftover stage is ours: adopted, then removed);
            a map keeps its contents: the new object reuses the compatible pinned map, looked up in <name>/maps/
            first, then in leftover stages (a run killed mid-swap left the newest ones there)
  attach    an XDP program with a priority (attach.xdp.priority/proceed_on) is loaded by libxdp into the interface's
            dispatcher instead of by libbpf (xdp_dispatcher.py), then pinned into the stage like any other: a
            replace attaches the new copy first and takes the old one out of the dispatcher by id in the swap;
            XDP/tc take the slot only as it was read: a free slot must still be free (XDP_FLAGS_UPDATE_IF_NOEXIST,
            tc NLM_F_EXCL), an occupied one must still hold the program read (XDP_FLAGS_REPLACE with it); tcx/cgroup
            links are updated in place (BPF_LINK_UPDATE), other links are created and pinned into the stage
  swap      each of the stage's pins renamed over its counterpart in <name>/ (prog, maps/<map>, link; rename on
            bpffs is atomic), so every map is pinned at all times; then the old maps the new object does not
            have are unpinned and old netlink attachments elsewhere removed
  record    the record rewritten without `pending`
  cleanup   leftover stages of killed runs unpinned
The kill -9 tests (tests/integration/test_ebpf_program_kill.py) kill the process from outside, at random moments
and at named calls; nothing here knows about them.
Importable without ansible.
"""
import errno
import os

from ansible_collections.hypermesh.ebpf.plugins.module_utils._common import layout
from ansible_collections.hypermesh.ebpf.plugins.module_utils._kernel import bpf_syscall as bs
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_attach as pa
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.held import Held
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import program_state as ps
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import tcx_order
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program import xdp_dispatcher
from ansible_collections.hypermesh.ebpf.plugins.module_utils._program.program_spec import is_multiprog


class ApplyError(Exception):
    pass


def _owner_of(pin_root, prog_id, me, state_dir=None):
    """Which other managed program under pin_root has prog_id pinned (or None)."""
    for other in ps.managed_names(pin_root, state_dir):
        if other != me and prog_id in ps.Live(pin_root, other).owned_prog_ids:
            return other
    return None


def _others_in(chain, live):
    others = [p for p in chain if p["id"] not in live.owned_prog_ids]
    return (" (the dispatcher also runs %s, which stay)" % ", ".join("%s id %d" % (p["name"], p["id"]) for p in others)
            if others else "")


def _prog_name(prog_id):
    try:
        fd = bs.get_fd_by_id("prog", prog_id)
    except OSError:
        return "?"
    try:
        return bs.prog_info(fd).get("name") or "?"
    finally:
        bs.close(fd)


class Program(object):
    """One managed program: `name` under `pin_root`."""

    def __init__(self, name, pin_root, state_dir=None):
        self.name = name
        self.pin_root = pin_root
        self.state_dir = state_dir
        self.dir = os.path.join(pin_root, name)
        self.shared_dir = os.path.join(pin_root, layout.SHARED)
        ps.check_dirs(pin_root, name)  # before anything under it is read: no link, nothing another user can write
        self.record = ps.read_record(name, state_dir)
        self.live = ps.Live(pin_root, name)
        self._state = None

    # ---- read / decide --------------------------------------------------------------------------------------
    def current_state(self):
        """absent | loaded | attached | inconsistent (a killed run or an outside change left something).
        Read from the kernel once per snapshot (record + live); converge and remove take a new snapshot."""
        if self._state is None:
            self._state = self._read_state()
        return self._state

    def _read_state(self):
        rec, live = self.record, self.live
        if not live.exists and not rec:
            return "absent"
        if not rec or rec.get("pending") or live.stages or not live.prog_id or rec.get("prog_id") != live.prog_id:
            return "inconsistent"
        if rec.get("attach") and self._is_attached(rec, live):
            return "attached"
        if not rec.get("attach") and not live.link:
            return "loaded"
        return "inconsistent"

    def _is_attached(self, rec, live):
        if rec.get("held"):  # kept by the holder: no link pinned, the holder's descriptor runs our program
            return not live.link and Held(self.pin_root, self.name).held_prog_id(rec["attach"]) == live.prog_id
        if rec.get("prog_attach"):  # a cgroup hook through BPF_PROG_ATTACH (no bpf_link): the hook lists it
            return not live.link and live.prog_id in pa.cgroup_attached_ids(rec["attach"])
        if is_multiprog(rec["attach"]):  # in libxdp's dispatcher, with its priority and proceed_on
            return not live.link and xdp_dispatcher.is_attached(rec["attach"], live.prog_id)
        return pa.is_attached(rec["attach"], live.prog_id, live.link)

    def before(self):
        rec = self.record or {}
        out = {"state": self.current_state()}
        if out["state"] != "absent":
            out.update(object=rec.get("object"), sha256=rec.get("sha256"), program=rec.get("program"),
                       attach=rec.get("attach"), kernel=self.live.summary())
            if rec.get("attach"):
                out["held"] = bool(rec.get("held"))
            if rec.get("prog_attach"):
                out["prog_attach"] = True
            if rec.get("globals"):
                out["globals"] = rec["globals"]  # the values it was loaded with
            if tcx_order.of(rec.get("attach")):
                out["position"] = tcx_order.position(rec["attach"], self.live.prog_id)  # where it runs now
            elif is_multiprog(rec.get("attach")):
                out["position"] = xdp_dispatcher.position(rec["attach"], self.live.prog_id)
        return out

    def in_sync(self, want):
        """want: {"state", "sha256", "program", "attach" (spec or None), "globals" (normalised values, optional)}."""
        rec, live = self.record, self.live
        if self.current_state() != want["state"]:
            return False
        if rec.get("sha256") != want["sha256"] or rec.get("program") != want["program"]:
            return False
        if rec.get("attach") != want["attach"]:
            return False
        if (rec.get("globals") or {}) != (want.get("globals") or {}):
            return False  # other values for the object's globals: a new program, replaced as a new object is
        if sorted(rec.get("maps", {}).items()) != sorted(live.maps.items()):
            return False
        if not tcx_order.in_position(want["attach"], live.prog_id, self.pin_root, self.state_dir):
            return False  # an ordered tcx program out of its place on the hook is moved (tcx_order)
        return True

    def check_slot(self, spec, force):
        """XDP/tc: refuse a slot held by a program this collection did not attach for `name` (unless force)."""
        if spec["type"] not in pa.NETLINK_KINDS:
            return
        if is_multiprog(spec):  # the dispatcher's programs share the hook; force takes nothing over there
            xdp_dispatcher.check_slot(spec, self.live.owned_prog_ids)
            return
        holder = pa.slot_holder(spec)
        if not holder or holder in self.live.owned_prog_ids:
            return
        chain = xdp_dispatcher.programs_of(spec, holder) if spec["type"] == "xdp" else None
        if chain and any(p["id"] in self.live.owned_prog_ids for p in chain):
            raise ApplyError("%s: this program runs in the interface's libxdp dispatcher (attached with priority "
                             "and proceed_on); to attach it alone, without them, remove it first (state: absent), "
                             "then attach it again%s" % (pa.describe(spec), _others_in(chain, self.live)))
        if force:
            return
        if chain is not None:
            raise ApplyError("%s is held by libxdp's dispatcher (program id %d), which runs %s: give this program "
                             "attach.xdp.priority to join them, or set force: true to replace the dispatcher (and "
                             "take those programs off the interface)" % (
                                 pa.describe(spec), holder,
                                 ", ".join("%s id %d" % (p["name"], p["id"]) for p in chain) or "no program"))
        other = _owner_of(self.pin_root, holder, self.name, self.state_dir)
        who = ("hypermesh program %r" % other) if other else "a program hypermesh did not attach"
        raise ApplyError("%s is held by program id %d (%s), %s: set force: true to take it over"
                         % (pa.describe(spec), holder, _prog_name(holder), who))

    # ---- converge -------------------------------------------------------------------------------------------
    def converge(self, want, obj_path, libbpf_object, force=False):
        """Make the kernel hold `want`. libbpf_object: an opened libbpf.BpfObject with the program selected."""
        prev_record = self.record
        undo = []
        created_dirs = []
        stage = self._new_stage()
        shared_before = set(os.listdir(self.shared_dir)) if os.path.isdir(self.shared_dir) else set()
        spec = want["attach"]
        try:
            journal = dict(prev_record or {})
            journal.update(name=self.name, pin_root=self.pin_root,
                           pending={"state": want["state"], "attach": spec})
            ps.write_record(self.name, journal, self.state_dir)
            for d in (self.pin_root, self.dir, stage):
                if ps.make_dir(d):  # 0700; one that appeared meanwhile must be ours (UnsafePath otherwise)
                    created_dirs.append(d)

            dispatched = want["state"] == "attached" and is_multiprog(spec)
            kept = self._reuse_maps(libbpf_object)
            try:
                if dispatched:  # libxdp loads it (an extension of its dispatcher) and attaches it
                    prog_fd, new_id = xdp_dispatcher.attach(spec, libbpf_object, want["program"])
                    undo.append(lambda: xdp_dispatcher.detach(spec, set([new_id])))
                else:
                    libbpf_object.load()
            finally:
                for fd in kept.values():
                    bs.close(fd)

            if dispatched:
                try:
                    bs.obj_pin(prog_fd, os.path.join(stage, layout.PIN_PROG))
                finally:
                    bs.close(prog_fd)  # our own dup: the pin and libxdp's dispatcher hold the program
            else:
                prog_fd = libbpf_object.program_fd(want["program"])
                new_id = bs.prog_info(prog_fd)["id"]
                bs.obj_pin(prog_fd, os.path.join(stage, layout.PIN_PROG))
            maps, shared = self._pin_maps(libbpf_object, stage)

            link_new = False
            if dispatched:
                pass  # attached above
            elif want["state"] == "attached" and want.get("held"):
                self._hold(spec, new_id, undo)
            elif want["state"] == "attached" and want.get("prog_attach"):
                pa.cgroup_prog_attach(spec, prog_fd)
                undo.append(lambda: pa.cgroup_prog_detach(spec, new_id))
            elif want["state"] == "attached":
                link_new = self._attach(spec, prog_fd, new_id, stage, force, undo)

            self._swap(want, spec, stage, link_new, new_id)
        except BaseException:
            for fn in reversed(undo):
                try:
                    fn()
                except Exception:
                    pass
            self._rollback_files(stage, created_dirs, shared_before, prev_record)
            raise

        record = {"name": self.name, "object": obj_path, "sha256": want["sha256"], "program": want["program"],
                  "prog_id": new_id, "maps": maps, "shared_maps": sorted(shared), "attach": spec,
                  "pin_root": self.pin_root}
        if want.get("programs"):
            record["programs"] = want["programs"]  # the object's programs as libbpf read them (by sha256)
        if want.get("globals"):
            record["globals"] = want["globals"]  # the values of the object's globals it was loaded with
        if want["state"] == "attached" and want.get("held"):
            record["held"] = True  # attached through the holder (held.py), not a pinned link
        if want["state"] == "attached" and want.get("prog_attach"):
            record["prog_attach"] = True  # a cgroup hook through BPF_PROG_ATTACH, not a pinned link
        ps.write_record(self.name, record, self.state_dir)
        for old in self.live.stages:
            ps.remove_tree(old)
        if os.path.isdir(stage):
            ps.remove_tree(stage)
        self.record = record
        self.live = ps.Live(self.pin_root, self.name)
        self._state = None
        return record

    def _new_stage(self):
        """<name>/stage_<pid>[_n]/: a leftover stage of a killed run with the same pid is kept (ours, adopted)."""
        stage = os.path.join(self.dir, ps.STAGE_PREFIX + str(os.getpid()))
        n = 0
        while os.path.lexists(stage):
            n += 1
            stage = os.path.join(self.dir, "%s%d_%d" % (ps.STAGE_PREFIX, os.getpid(), n))
        return stage

    def _pin_maps(self, libbpf_object, stage):
        """Pin the object's own maps into <stage>/maps/. Returns ({pin name: map id}, [shared pin paths])."""
        maps, shared = {}, []
        for m in libbpf_object.maps():
            if m["fd"] < 0:
                continue
            if m["pinned"]:
                shared.append(m["pin_path"])
                continue
            if not os.path.isdir(os.path.join(stage, layout.PIN_MAPS)):
                os.mkdir(os.path.join(stage, layout.PIN_MAPS), 0o700)
            pin_name = _pin_name(m["name"])
            bs.obj_pin(m["fd"], os.path.join(stage, layout.PIN_MAPS, pin_name))
            maps[pin_name] = bs.map_info(m["fd"])["id"]
        return maps, shared

    def _map_candidates(self, pin_name):
        """Where a map of ours may be pinned, in order: <name>/maps/, then leftover stages, newest first (a run
        killed between attach and swap left the maps its program used there)."""
        stages = sorted(self.live.stages, key=_mtime, reverse=True)
        paths = ([os.path.join(self.dir, layout.PIN_MAPS, pin_name)]
                 + [os.path.join(s, layout.PIN_MAPS, pin_name) for s in stages])
        return [p for p in paths if os.path.exists(p)]

    def _compatible_map(self, d):
        """fd of the first pinned candidate with the same type, sizes, entries and flags as map def d, or None."""
        for path in self._map_candidates(_pin_name(d["name"])):
            try:
                fd = bs.obj_get(path)
            except OSError:
                continue
            try:
                info = bs.map_info(fd)
            except OSError:
                bs.close(fd)
                continue
            if all(info[k] == d[k] for k in ("type", "key_size", "value_size", "max_entries", "map_flags")):
                return fd
            bs.close(fd)
        return None

    def _reuse_maps(self, libbpf_object):
        """Keep the contents of our pinned maps across a replace (and across a killed replace): a map of the new
        object with the same name, type, sizes, entries and flags as a pinned one of ours reuses it (a blocklist
        keeps blocking, counters keep counting). Internal maps (.bss/.data/.rodata) are always new.
        Returns {name: fd} to close after load."""
        kept = {}
        for d in libbpf_object.map_defs():
            if "." in d["name"] or d["pin_path"]:
                continue
            fd = self._compatible_map(d)
            if fd is None:
                continue
            try:
                libbpf_object.reuse_map(d["name"], fd)
            except Exception:
                bs.close(fd)
                raise
            kept[d["name"]] = fd
        return kept

    def _attach(self, spec, prog_fd, new_id, stage, force, undo):
        """Attach prog_fd at spec; push undo steps. Returns True when a new link was pinned into the stage.
        XDP/tc: the slot is taken only as it was read here (free stays a condition, not an overwrite)."""
        if spec["type"] in pa.NETLINK_KINDS:
            holder = pa.slot_holder(spec)
            if holder and holder not in self.live.owned_prog_ids and not force:
                self.check_slot(spec, force)
            pa.attach_netlink(spec, prog_fd, holder or 0, self.name)
            if holder:
                undo.append(lambda: self._restore_slot(spec, holder, new_id))
            else:
                undo.append(lambda: pa.detach_netlink(spec, set([new_id])))
            return False
        old_spec = (self.record or {}).get("attach")
        updatable = pa.can_update_link(old_spec, spec, self.live.link, self.pin_root, self.state_dir)
        if self.live.link and self.live.prog_id and updatable:
            link_fd = bs.obj_get(os.path.join(self.dir, layout.PIN_LINK))
            old_fd = bs.get_fd_by_id("prog", self.live.link["prog_id"])
            try:
                bs.link_update(link_fd, prog_fd, old_fd)
            except BaseException:
                bs.close(link_fd)
                bs.close(old_fd)
                raise

            def back():
                try:
                    bs.link_update(link_fd, old_fd, prog_fd)
                finally:
                    bs.close(link_fd)
                    bs.close(old_fd)
            undo.append(back)
            return False
        link_fd = pa.create_link(spec, prog_fd, self.pin_root, self.state_dir)
        try:
            bs.obj_pin(link_fd, os.path.join(stage, layout.PIN_LINK))
        finally:
            bs.close(link_fd)
        return True

    def _hold(self, spec, new_id, undo):
        """Have the holder attach the new program (it attaches the new one before it lets the old one go)."""
        held = Held(self.pin_root, self.name)
        previous = held.request()
        undo.append(lambda: held.restore(previous))
        held.hold(new_id, spec)

    def _restore_slot(self, spec, holder, new_id):
        fd = bs.get_fd_by_id("prog", holder)
        try:
            pa.attach_netlink(spec, fd, new_id, self.name)
        finally:
            bs.close(fd)

    def _swap(self, want, spec, stage, link_new, new_id):
        """Rename the stage's pins into place, one rename over each old pin (atomic on bpffs: no moment without a
        pinned map, so a kill here loses no contents), then drop what the new state no longer has."""
        os.rename(os.path.join(stage, layout.PIN_PROG), os.path.join(self.dir, layout.PIN_PROG))
        self._swap_maps(os.path.join(stage, layout.PIN_MAPS))
        link = os.path.join(self.dir, layout.PIN_LINK)
        if link_new:
            replaced = tcx_order.open_replaced(spec, link)  # tcx: the old link, detached now, not when freed
            os.rename(os.path.join(stage, layout.PIN_LINK), link)
            tcx_order.detach(replaced)
        elif (want["state"] != "attached" or spec["type"] in pa.NETLINK_KINDS or want.get("held")
              or want.get("prog_attach")):
            _unlink(link)
        if not (want["state"] == "attached" and want.get("held")):
            Held(self.pin_root, self.name).release()  # held before, if at all: let go (a no-op when not)
        self._detach_old_prog_attach(want, spec, new_id)
        owned = set(self.live.owned_prog_ids) | set([new_id])
        rec = self.record or {}
        olds = [rec.get("attach"), (rec.get("pending") or {}).get("attach")]
        for old in olds:
            if is_multiprog(old):  # the old copies out of the dispatcher, by id (the new one runs already)
                xdp_dispatcher.detach(old, owned - set([new_id]))
            elif old and old["type"] in pa.NETLINK_KINDS and (want["state"] != "attached" or old != spec):
                pa.detach_netlink(old, owned)

    def _detach_old_prog_attach(self, want, spec, new_id):
        """The program a BPF_PROG_ATTACH before this run attached, detached now that the new one runs (or is not
        to run there at all): the cgroup hook was never without ours."""
        rec = self.record or {}
        old_id = self.live.prog_id
        if rec.get("prog_attach") and rec.get("attach") and old_id and old_id != new_id:
            pa.cgroup_prog_detach(rec["attach"], old_id)

    def _swap_maps(self, staged):
        """<stage>/maps/* renamed over <name>/maps/*; then the old maps the new object does not have unpinned."""
        mdir = os.path.join(self.dir, layout.PIN_MAPS)
        new = sorted(os.listdir(staged)) if os.path.isdir(staged) else []
        if new and not os.path.isdir(mdir):
            os.mkdir(mdir, 0o700)
        for m in new:
            os.rename(os.path.join(staged, m), os.path.join(mdir, m))
        if os.path.isdir(mdir):
            for m in sorted(set(os.listdir(mdir)) - set(new)):
                _unlink(os.path.join(mdir, m))
            if not new:
                os.rmdir(mdir)

    def _rollback_files(self, stage, created_dirs, shared_before, prev_record):
        try:
            ps.remove_tree(stage)
        except OSError:
            pass
        if os.path.isdir(self.shared_dir):
            for entry in set(os.listdir(self.shared_dir)) - shared_before:
                _unlink(os.path.join(self.shared_dir, entry))
            if not shared_before and not os.listdir(self.shared_dir):
                os.rmdir(self.shared_dir)
        for d in reversed(created_dirs):
            try:
                os.rmdir(d)
            except OSError:
                pass
        ps.write_record(self.name, prev_record, self.state_dir)

    # ---- remove ---------------------------------------------------------------------------------------------
    def remove(self, extra_spec=None):
        """Detach, unpin everything under <name>/, forget the record; shared maps no other record uses go too.
        The tree under <name>/ is checked before anything is detached (no link, every entry ours)."""
        ps.remove_tree(self.dir, dry_run=True)
        rec = self.record or {}
        owned = set(self.live.owned_prog_ids)
        specs = [rec.get("attach"), (rec.get("pending") or {}).get("attach"), extra_spec]
        if owned:
            for spec in specs:
                if is_multiprog(spec):
                    xdp_dispatcher.detach(spec, owned)
                elif spec and spec["type"] in pa.NETLINK_KINDS:
                    pa.detach_netlink(spec, owned)
                elif spec and spec["type"] == "cgroup" and not self.live.link:
                    for prog_id in owned:  # attached through BPF_PROG_ATTACH (no bpf_link), or by a killed run
                        pa.cgroup_prog_detach(spec, prog_id)
        Held(self.pin_root, self.name).release()  # a held attachment (if any) goes with its program
        link = os.path.join(self.dir, layout.PIN_LINK)
        if os.path.exists(link):
            try:
                fd = bs.obj_get(link)
                try:
                    bs.link_detach(fd)
                except OSError:
                    pass
                finally:
                    bs.close(fd)
            except OSError:
                pass
        ps.remove_tree(self.dir)
        for path in rec.get("shared_maps") or []:
            if os.path.dirname(path) == self.shared_dir and not self._shared_used_elsewhere(path):
                _unlink(path)  # only a pin of <pin_root>/_shared/, whatever the record says
        if os.path.isdir(self.shared_dir) and not os.listdir(self.shared_dir):
            os.rmdir(self.shared_dir)
        ps.write_record(self.name, None, self.state_dir)
        self.record = None
        self.live = ps.Live(self.pin_root, self.name)
        self._state = None

    def _shared_used_elsewhere(self, path):
        state_dir = os.path.dirname(ps.record_path(self.name, self.state_dir))
        for entry in os.listdir(state_dir) if os.path.isdir(state_dir) else []:
            if not entry.endswith(".json") or entry == self.name + ".json":
                continue
            other = ps.read_record(entry[:-5], self.state_dir) or {}
            if path in (other.get("shared_maps") or []):
                return True
        return False


def _unlink(path):
    try:
        os.unlink(path)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise


def _pin_name(map_name):
    """The pin of a map under maps/: its name with dots made underscores (bpffs refuses dots: x.bss)."""
    return map_name.replace(".", "_")


def _mtime(path):
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return 0
