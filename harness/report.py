"""docs/kernel-matrix.json and docs/kernel-matrix.md from the per-guest results of a matrix run.

A result (one JSON file per guest, written by the converge playbook, completed by matrix.sh):
  guest, suite, cmdline, accel, boot_seconds, release, lsm (active list), features (as ebpf_facts returns
  them), programs: {name: {object, attach, outcome: attached|loaded|refused|failed, message, counter}},
  steps: {step: seconds}
The rollout phase (side_effect.yml) adds results/<guest>.rollout.json (rollout1, rollout2, reboot, prune: changed
task counts, module runs on the host, seconds, the kernel state read in the guest and its problems) and
results/plays-side_effect.json (every play's seconds, for the phase times; hm_changes).
A kernel brought in $HYPERMESH_CACHE/kernels/<name>/ ran the custom scenario alone, its records in the run's
kernel-<name>/ folder (the same files): its column is kernel-<name>, with its own step times.
"""
import glob
import json
import os
import time

ORDER = ["bullseye", "bullseye-lsm", "bookworm", "trixie", "sid", "custom"]
FEATURES = ["xdp", "tc", "tcx", "tracepoint", "raw_tracepoint", "kprobe", "uprobe", "fentry", "cgroup", "lsm",
            "global_data", "xdp_multiprog", "bpf_link", "perf_link", "holder", "ringbuf", "btf", "bpf_stats"]


def _rank(name):
    return ORDER.index(name) if name in ORDER else len(ORDER)


def _load(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def merge(converge, verify=None, instance=None, steps=None, rollout=None):
    """One guest's result: converge's record, verify's counters, the harness' boot record, step times, and
    the rollout phase's record."""
    r = dict(converge)
    if rollout:
        r["rollout"] = rollout
    programs = {n: dict(p) for n, p in r.get("programs", {}).items()}
    for name, c in (verify or {}).items():
        if name in programs:
            programs[name]["counter"] = c.get("after")
            programs[name]["counter_before"] = c.get("before")
    r["programs"] = programs
    instance = instance or {}
    for key in ("accel", "boot_seconds", "cmdline", "custom_kernel"):
        if key in instance:
            r[key] = instance[key]
    r["steps"] = steps or {}
    return r


def load_run(run, kernels=True):
    """Every guest of a matrix run folder: results/<guest>.converge.json, .verify.json, instances.json, and
    the guest of each kernel-<name>/ folder in it (kernels brought), renamed kernel-<name>."""
    instances = {i["instance"]: i for i in _load(os.path.join(run, "instances.json"), [])}
    steps = _load(os.path.join(run, "steps.json"), {})
    results = []
    for path in glob.glob(os.path.join(run, "results", "*.converge.json")):
        name = os.path.basename(path)[:-len(".converge.json")]
        verify = _load(os.path.join(run, "results", name + ".verify.json"), {})
        rollout = _load(os.path.join(run, "results", name + ".rollout.json"), None)
        results.append(merge(_load(path, {"guest": name}), verify, instances.get(name), steps, rollout))
        holder = _load(os.path.join(run, "results", name + ".holder.json"), None)  # verify's SIGKILL of the holder
        if holder:
            results[-1]["holder"] = holder
    phases = load_phases(run)
    for r in results:
        r["rollout_phases"] = phases
    user = _load(os.path.join(run, "user.json"), None)
    if user is not None:  # scripts/matrix.sh user: the user's programs and playbook
        results = load_user(run, user, results)
    if kernels:
        results += load_kernels(run)
    return sorted(results, key=lambda r: (_rank(r.get("guest", "")), r.get("guest", "")))


def load_kernels(run):
    """The guests of the run's kernel-<name>/ folders (scripts/matrix.sh: the custom scenario with
    HYPERMESH_KERNEL=<name>), each renamed kernel-<name> and marked with its name and kernel files."""
    out = []
    for sub in sorted(glob.glob(os.path.join(run, "kernel-*"))):
        if not os.path.isdir(sub):
            continue
        guest = os.path.basename(sub)
        for r in load_run(sub, kernels=False):
            if r.get("guest") != "custom":
                continue
            r["guest"] = guest
            r["kernel"] = {"name": guest[len("kernel-"):], "image": r.pop("custom_kernel", None)}
            # matrix.sh names the steps of this kernel's run kernel-<name>.<step>
            r["steps"] = {(k[len(guest) + 1:] if k.startswith(guest + ".") else k): v
                          for k, v in r.get("steps", {}).items()}
            out.append(r)
    return out


OURS = "Hypermesh user matrix:"  # the plays of extensions/molecule/user/ around the user's playbook


def play_summary(run, playbook, host):
    """The user's plays of results/plays-<playbook>.json (hm_changes) for one host, added up: ok, changed,
    failed counts and the changed and failed tasks' names; None when none of them ran on the host."""
    doc = _load(os.path.join(run, "results", "plays-%s.json" % playbook), None)
    if doc is None:
        return None
    out = {"ok": 0, "changed": 0, "failed": 0, "changed_tasks": [], "failed_tasks": []}
    seen = False
    for play in doc.get("plays", []):
        rec = play.get("hosts", {}).get(host)
        if rec is None or play.get("name", "").startswith(OURS):
            continue
        seen = True
        for key in ("ok", "changed", "failed"):
            out[key] += rec.get(key, 0)
        out["changed_tasks"] += rec.get("changed_tasks", [])
        out["failed_tasks"] += rec.get("failed_tasks", [])
    return out if seen else None


def prog_ids_attached(state):
    """Program ids the guest's kernel has attached: the managed links' and every interface's XDP, tc, tcx."""
    ids = set(l.get("prog_id") for l in state.get("links", []))

    def walk(v):
        if isinstance(v, dict):
            if isinstance(v.get("prog_id"), int):
                ids.add(v["prog_id"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                if isinstance(x, int) and not isinstance(x, bool):
                    ids.add(x)  # tcx: the program ids on the hook
                else:
                    walk(x)
    for iface in state.get("interfaces", []):
        walk({k: iface.get(k) for k in ("xdp", "tc", "tcx")})
    ids.discard(0)
    ids.discard(None)
    return ids


def user_programs(state, counters):
    """{name: {outcome: attached|loaded, prog_id, type, counter}} from what ebpf_info listed in the guest
    (results/<guest>.state.json) and the user's hm_report (a counter whose name is a program's)."""
    attached = prog_ids_attached(state)
    programs = {}
    for p in state.get("programs", []):
        name = p.get("managed_name") or p.get("name")
        entry = programs.setdefault(name, {"outcome": "loaded", "prog_id": p.get("id"),
                                           "type": p.get("type_name"), "message": ""})
        if p.get("id") in attached:
            entry["outcome"] = "attached"
    for name, value in (counters or {}).items():
        if name in programs and isinstance(value, (int, float)) and not isinstance(value, bool):
            programs[name]["counter"] = value
    return programs


def load_user(run, user, results):
    """The user scenario's per-guest records merged into `results`: the programs the kernel held (state),
    the user's play (converge, idempotence, verify: hm_changes' counts, hm_failures' messages), hm_report."""
    by_guest = {r["guest"]: r for r in results}
    for name in user.get("guests", []):
        by_guest.setdefault(name, {"guest": name, "programs": {}, "steps": results[0]["steps"] if results else {}})
    # matrix.sh keeps the first converge's files as *-converge-1.json; plays-converge.json is then idempotence's
    first = "converge-1" if os.path.exists(os.path.join(run, "results", "plays-converge-1.json")) else "converge"
    steps = [("converge", first), ("idempotence", "converge" if first != "converge" else None),
             ("verify", "verify"), ("prepare", "prepare"), ("record", "record")]
    for name, r in by_guest.items():
        state = _load(os.path.join(run, "results", name + ".state.json"), {})
        counters = _load(os.path.join(run, "results", name + ".hm_report.json"), None)
        r["programs"] = user_programs(state, counters)
        plays = {step: play_summary(run, book, name) for step, book in steps[:3] if book}
        failures = [dict(f, step=step) for step, book in steps if book
                    for f in _load(os.path.join(run, "results", "failures-%s.json" % book), [])
                    if f.get("host") == name]
        r["user"] = {"plays": plays, "failures": failures, "hm_report": counters}
        r["user_run"] = user
    return list(by_guest.values())


def load_phases(run):
    """[(play name, seconds)] of the rollout phase, in order (results/plays-side_effect.json)."""
    doc = _load(os.path.join(run, "results", "plays-side_effect.json"), {})
    out, n = [], 0
    for p in doc.get("plays", []):
        name = p.get("name", "?")
        if name.startswith("Roll eBPF programs out"):  # playbooks/rollout.yml's play, once per rollout
            n += 1
            name = "%s [rollout %d]" % (name, n)
        out.append([name, p.get("seconds")])
    return out


def rollout_summary(rec):
    """The rollout record of one guest, reduced to what the report shows (None when there is none)."""
    if not rec:
        return None
    out = {}
    for phase in ("rollout1", "rollout2", "prune"):
        if phase in rec:
            out[phase] = {"changed": rec[phase].get("changed"), "seconds": rec[phase].get("seconds"),
                          "module_runs": rec[phase].get("module_runs"),
                          "problems": (rec[phase].get("kernel") or {}).get("problems", [])}
    if "reboot" in rec:
        rb = rec["reboot"]
        kernel = rb.get("kernel") or {}
        state = [l for l in rb.get("reapply") or [] if l.startswith(("ActiveState=", "ExecMainStatus="))]
        out["reboot"] = {"seconds": rb.get("seconds"), "reapply": " ".join(sorted(state)),
                         "programs_back": sorted(n for n, p in (kernel.get("programs") or {}).items()
                                                 if p.get("prog_id")),
                         "blocked": kernel.get("blocked"), "problems": kernel.get("problems", [])}
    if "prune" in rec:
        out["prune"]["removed"] = sorted((rec["prune"].get("kernel") or {}).get("absent", {}))
    return out


def to_json(results, generated=None, phases=None):
    """The report as a dict: per guest (kernel), release, features as ebpf_facts returns them, outcomes."""
    guests = {}
    for r in results:
        programs = r.get("programs", {})
        guests[r["guest"]] = {
            "release": r.get("release"),
            "suite": r.get("suite"),
            "cmdline": r.get("cmdline", ""),
            "lsm": r.get("lsm", []),
            "features": r.get("features", {}),
            "loaded": sorted(n for n, p in programs.items() if p.get("outcome") in ("loaded", "attached")),
            "attached": sorted(n for n, p in programs.items() if p.get("outcome") == "attached"),
            "refused": {n: p.get("message", "") for n, p in sorted(programs.items())
                        if p.get("outcome") == "refused"},
            "failed": {n: p.get("message", "") for n, p in sorted(programs.items())
                       if p.get("outcome") == "failed"},
            "counters": {n: p["counter"] for n, p in sorted(programs.items()) if p.get("counter") is not None},
            "programs": programs,
            "accel": r.get("accel"),
            "boot_seconds": r.get("boot_seconds"),
        }
        if r.get("rollout"):
            guests[r["guest"]]["rollout"] = rollout_summary(r["rollout"])
        if r.get("holder"):
            guests[r["guest"]]["holder"] = r["holder"]
        if r.get("kernel"):  # a kernel brought: its files and its own run's step times
            guests[r["guest"]]["kernel"] = r["kernel"]
            guests[r["guest"]]["steps_seconds"] = r.get("steps", {})
        if r.get("user"):
            guests[r["guest"]]["user"] = r["user"]
    steps = results[0].get("steps", {}) if results else {}
    out = {"generated": generated or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "guests": guests, "steps_seconds": steps,
           "rollout_phases": phases or (results[0].get("rollout_phases", []) if results else [])}
    if results and results[0].get("user_run") is not None:
        out["user"] = results[0]["user_run"]
    return out


def _mark(feature):
    if not feature:
        return "?"
    if not feature.get("probed", True):
        return "?"
    return "yes" if feature.get("supported") else "no"


def _intro(report):
    """The report's title and first paragraph: ours (docs/kernel-matrix.md), or the user's run."""
    user = report.get("user")
    if user is None:
        return ["# Kernel matrix", "",
                "Generated by `scripts/test.sh matrix` (%s) from real guests: the features are what "
                "`hypermesh.ebpf.ebpf_facts` probed in each guest, the programs what `hypermesh.ebpf.ebpf_program` "
                "did there. Regenerate with `scripts/matrix.sh`; see docs/harness.md." % report["generated"]]
    return ["# Kernel matrix: %s" % os.path.basename(user.get("playbook") or "?"), "",
            "Generated by `scripts/matrix.sh user` (%s) from real guests: the features are what "
            "`hypermesh.ebpf.ebpf_facts` probed in each guest, the programs what the guest's kernel held after "
            "your playbook (`hypermesh.ebpf.ebpf_info`), the counters what your playbook set in `hm_report`. "
            "Playbook `%s`, objects `%s`, verify `%s`; see docs/harness.md, \"Your own programs across kernels\"."
            % (report["generated"], user.get("playbook"), user.get("programs"), user.get("verify") or "-")]


def user_markdown(report, names):
    """The user's sections: per guest what each step of their playbook changed and failed, then hm_report."""
    guests = report["guests"]
    out = ["", "## Your playbook (tasks ok / changed / failed per step)", "",
           "| guest | converge | idempotence | verify | changed in converge | failed |", "|---|---|---|---|---|---|"]

    def counts(p):
        return "%d / %d / %d" % (p["ok"], p["changed"], p["failed"]) if p else "-"
    for n in names:
        u = guests[n].get("user") or {}
        plays = u.get("plays") or {}
        failed = ["%s: %s" % (f["step"], f["task"]) for f in u.get("failures", [])]
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            n, counts(plays.get("converge")), counts(plays.get("idempotence")), counts(plays.get("verify")),
            ", ".join((plays.get("converge") or {}).get("changed_tasks", [])).replace("|", "/") or "-",
            ", ".join(failed).replace("|", "/") or "none"))
    keys = sorted({k for n in names for k in ((guests[n].get("user") or {}).get("hm_report") or {})})
    if keys:
        out += ["", "## Your counters (hm_report)", "", "| counter | " + " | ".join(names) + " |",
                "|---|" + "---|" * len(names)]
        for k in keys:
            cells = [str(((guests[n].get("user") or {}).get("hm_report") or {}).get(k, "-")) for n in names]
            out.append("| %s | %s |" % (k, " | ".join(c.replace("|", "/") for c in cells)))
    return out


def to_markdown(report):
    guests = report["guests"]
    names = list(guests)
    out = _intro(report) + ["", "## Features probed", "",
                            "| feature | " + " | ".join(names) + " |",
                            "|---|" + "---|" * len(names),
                            "| kernel | " + " | ".join(guests[n]["release"] or "?" for n in names) + " |"]
    for f in FEATURES:
        out.append("| %s | %s |" % (f, " | ".join(_mark(guests[n]["features"].get(f)) for n in names)))
    out += ["", "## Programs (outcome, counter after traffic; held: kept by hypermesh-ebpf-holder.service)", ""]
    programs = sorted({p for n in names for p in guests[n]["programs"]})
    out.append("| program | " + " | ".join(names) + " |")
    out.append("|---|" + "---|" * len(names))
    for p in programs:
        cells = []
        for n in names:
            entry = guests[n]["programs"].get(p)
            if not entry:
                cells.append("-")
                continue
            cell = entry.get("outcome", "?")
            if entry.get("held"):
                cell += ", held"  # kept by the holder service: the kernel has no pinnable link for it
            if entry.get("counter") is not None:
                moved = entry.get("counter_before") is None or entry["counter"] > entry["counter_before"]
                cell += " (%s%s)" % (entry["counter"], "" if moved else ", did not move")
            cells.append(cell)
        out.append("| %s | %s |" % (p, " | ".join(cells)))
    killed = [n for n in names if guests[n].get("holder")]
    if killed:
        out += ["", "## The holder killed (verify: SIGKILL, then systemd starts it again)", "",
                "| guest | held programs | all held again after (ms) | counters moved after |", "|---|---|---|---|"]
        for n in killed:
            h = guests[n]["holder"]
            out.append("| %s | %s | %s | %s |" % (n, ", ".join(h.get("held", [])), h.get("back_ms"),
                                                  ", ".join("%s +%s" % kv for kv in sorted(h.get("moved", {}).items()))))
    out += ["", "## Refusals", ""]
    for n in names:
        for p, msg in guests[n]["refused"].items():
            out.append("- %s, %s: %s" % (n, p, msg.replace("\n", " ")))
        for p, msg in guests[n]["failed"].items():
            out.append("- %s, %s FAILED: %s" % (n, p, msg.replace("\n", " ")))
        for f in (guests[n].get("user") or {}).get("failures", []):
            out.append("- %s, %s, task %s FAILED: %s" % (n, f["step"], f["task"], f["msg"].replace("\n", " ")))
    if report.get("user") is not None:
        out += user_markdown(report, names)
    out += ["", "## Guests", "", "| guest | kernel command line extra | accel | boot to SSH (s) | active LSMs |",
            "|---|---|---|---|---|"]
    for n in names:
        g = guests[n]
        boot = g["boot_seconds"] if g["boot_seconds"] is not None else "?"
        out.append("| %s | %s | %s | %s | %s |" % (n, g["cmdline"] or "-", g["accel"] or "?", boot,
                                                   ",".join(g["lsm"]) or "?"))
    rolled = [n for n in names if guests[n].get("rollout")]
    if rolled:
        out += ["", "## Rollout (playbooks/rollout.yml on every guest at once, then reboot, then prune)", "",
                "Side effect of the scenario (extensions/molecule/default/side_effect.yml): r_blocklist (XDP, "
                "declared map entry), r_tc (tc egress), r_rawtp (raw tracepoint), r_openat (tracepoint; held by "
                "hypermesh-ebpf-holder.service where the kernel has no perf links). Per rollout the changed tasks "
                "and the module runs on the guest (task results that ran a module there, counted by the "
                "callback hm_changes; a module run costs 10-15 s under TCG); after the reboot, what "
                "`hypermesh-ebpf-reapply.service` put back (read in the guest: pins, program and link lists, "
                "XDP/tc through netlink) and the blocklist's drop count for its entry before and after 20 "
                "datagrams from that source; prune: the program removed from the kernel.", "",
                "| guest | rollout 1 changed | rollout 1 module runs | rollout 2 changed | rollout 2 module runs "
                "| reboot (s) | re-apply unit | back after reboot | drops counted | prune module runs "
                "| prune removed | problems |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def cell(ro, phase, key):
            v = (ro.get(phase) or {}).get(key)
            return "-" if v is None else v
        for n in rolled:
            ro = guests[n]["rollout"]
            rb = ro.get("reboot") or {}
            bl = rb.get("blocked") or {}
            problems = [p for k in ("rollout1", "reboot", "prune") for p in (ro.get(k) or {}).get("problems", [])]
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                n, cell(ro, "rollout1", "changed"), cell(ro, "rollout1", "module_runs"),
                cell(ro, "rollout2", "changed"), cell(ro, "rollout2", "module_runs"), cell(ro, "reboot", "seconds"),
                rb.get("reapply") or "-", ", ".join(rb.get("programs_back", [])) or "-",
                "%s -> %s" % (bl.get("before"), bl.get("after")) if bl else "-", cell(ro, "prune", "module_runs"),
                ", ".join((ro.get("prune") or {}).get("removed", [])) or "-",
                "; ".join(problems).replace("|", "/") or "none"))
    if report.get("rollout_phases"):
        out += ["", "## Rollout phase times (seconds, all guests together)", "",
                "| play | seconds |", "|---|---|"]
        for name, secs in report["rollout_phases"]:
            out.append("| %s | %s |" % (name.replace("|", "/"), secs))
        out.append("| all plays | %s |" % round(sum(phase[1] or 0 for phase in report["rollout_phases"]), 1))
    brought = [n for n in names if guests[n].get("kernel")]
    if brought:
        out += ["", "## Kernels brought ($HYPERMESH_CACHE/kernels/<name>/, each alone on its rootfs)", "",
                "| guest | kernel release (in the guest) | image | rootfs | steps (seconds) |", "|---|---|---|---|---|"]
        for n in brought:
            g = guests[n]
            steps = ", ".join("%s %s" % (k, v) for k, v in g.get("steps_seconds", {}).items()) or "-"
            out.append("| %s | %s | %s | %s | %s |" % (n, g["release"] or "?", g["kernel"].get("image") or "?",
                                                       g["suite"] or "?", steps))
    if report.get("steps_seconds"):
        title = "## Steps (seconds, all guests together%s)" % ("; kernels brought: above" if brought else "")
        out += ["", title, "",
                "| " + " | ".join(report["steps_seconds"]) + " |",
                "|" + "---|" * len(report["steps_seconds"]),
                "| " + " | ".join(str(v) for v in report["steps_seconds"].values()) + " |"]
    return "\n".join(out) + "\n"


def write(results, outdir, generated=None, phases=None):
    report = to_json(results, generated, phases)
    with open(os.path.join(outdir, "kernel-matrix.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    with open(os.path.join(outdir, "kernel-matrix.md"), "w") as f:
        f.write(to_markdown(report))
    return report
