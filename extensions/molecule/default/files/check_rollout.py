"""Read, in the guest, the kernel state of the rollout's programs and print it as JSON with the problems found.

  check_rollout.py --pin-root DIR --present JSON --absent JSON [--blocked PROG/MAP/IPV4] [--ids FILE]

--present {name: attach point as the role was given it}: the program is pinned (<pin-root>/<name>/prog), the
  kernel lists that program, and it is attached where it should be: XDP and tc read back through netlink
  (`bpftool net show` inside the namespace), link-based kinds through the pinned link and `bpftool link show`,
  or, without a pinned link, through a perf event the holder service's main process has open (`bpftool perf`).
--absent [name]: no pins left under <pin-root>/<name>, and the program and link ids this checker saw for it the
  last time (--ids) are gone from the kernel's lists (and from the holder's perf events).
--moves PROG/MAP: the pinned map's values move while files are opened (a tracepoint counter counting again).
--blocked PROG/MAP/ADDR: ADDR is a key of the pinned map, and 20 UDP datagrams sent from ADDR's namespace hm0
  to 10.199.1.2 move its value (the XDP blocklist counts the drops per source).
Exit status 0; the caller asserts `problems` is empty (so the state is recorded either way).
"""
import argparse
import json
import os
import socket
import subprocess
import time


def run_json(argv):
    out = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                         check=False)  # the exit status is judged below, with the JSON answer
    try:
        doc = json.loads(out.stdout or "null")
    except ValueError:
        doc = None
    # bpftool -j reports errors as {"error": ...} on stdout; bpftool 7.8 (Debian sid) prints the link of
    # `link show pinned` and still exits 255, so a JSON answer that is not an error is taken
    if isinstance(doc, dict) and "error" in doc or (out.returncode != 0 and doc is None):
        raise RuntimeError("%s: exit %d: %s %s" % (" ".join(argv), out.returncode, out.stdout.strip(),
                                                   out.stderr.strip()))
    return doc


def bpftool(*args, netns=None):
    argv = ["bpftool", "-j"] + list(args)
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    return run_json(argv)


def raw_int(v):
    """bpftool's raw bytes (a list of "0x.." without BTF), or the BTF-formatted integer."""
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return int.from_bytes(bytes(int(x, 16) for x in v), "little")
    return v


def map_value(path, key_bytes):
    """The value of key_bytes in a pinned hash map of u64 values, or None when the key is not there."""
    want_le = int.from_bytes(key_bytes, "little")
    for e in bpftool("map", "dump", "pinned", path) or []:
        if "formatted" in e:
            e = e["formatted"]
        if raw_int(e.get("key")) == want_le:
            return raw_int(e.get("value"))
    return None


def pinned_id(path, kind):
    if not os.path.exists(path):
        return None
    return bpftool(kind, "show", "pinned", path).get("id")


HOLDER_UNIT = "hypermesh-ebpf-holder.service"


def kernel_links():
    """{id: link} of `bpftool link show`; {} on a kernel without bpf_link (before 5.7), where bpftool answers
    [{"error": "... kernel too old?"}] and exits 255."""
    try:
        listed = bpftool("link", "show") or []
    except RuntimeError as e:
        if "kernel too old" in str(e):
            return {}
        raise
    if listed and "error" in listed[0]:
        if "kernel too old" in listed[0]["error"]:
            return {}
        raise RuntimeError("bpftool link show: %s" % listed[0]["error"])
    return dict((link["id"], link) for link in listed)


def perf_holders():
    """{prog_id: [pid]} of the perf events and raw tracepoints processes hold (`bpftool perf`)."""
    out = {}
    for e in bpftool("perf") or []:
        out.setdefault(e["prog_id"], []).append(e["pid"])
    return out


def holder_pid():
    out = subprocess.run(["systemctl", "show", "-p", "MainPID", "--value", HOLDER_UNIT], stdout=subprocess.PIPE,
                         universal_newlines=True, check=False).stdout.strip()
    return int(out or 0)


def map_total(path):
    """Sum of the integer values of a pinned map (raw bytes or BTF-formatted, per-CPU values added up)."""
    total = 0
    for e in bpftool("map", "dump", "pinned", path) or []:
        e = e.get("formatted", e)
        for v in e.get("values", [e.get("value")]):
            v = v.get("value") if isinstance(v, dict) and "cpu" in v else v
            v = raw_int(v)
            total += v if isinstance(v, int) else 0
    return total


def check_present(root, name, attach, progs, links, problems, held=None):
    d = os.path.join(root, name)
    rec = {"pins": sorted(os.listdir(d)) if os.path.isdir(d) else []}
    pid = pinned_id(os.path.join(d, "prog"), "prog")
    rec["prog_id"] = pid
    if pid is None:
        problems.append("%s: no pinned program at %s/prog" % (name, d))
        return rec
    if pid not in progs:
        problems.append("%s: pinned program %s not in the kernel's program list" % (name, pid))
    kind, point = list(attach.items())[0]
    if kind in ("xdp", "tc"):
        net = bpftool("net", "show", "dev", point["interface"], netns=point.get("netns"))
        net = net[0] if isinstance(net, list) and net else (net or {})
        if kind == "xdp":
            ids = [x.get("id") for x in net.get("xdp", [])]
        else:
            direction = point.get("direction", "ingress")
            ids = [x.get("id") for x in net.get("tc", []) if str(x.get("kind", "")).endswith(direction)]
        rec["attached_ids"] = ids
        if pid not in ids:
            problems.append("%s: %s on %s (netns %s) runs %s, not the pinned program %s"
                            % (name, kind, point["interface"], point.get("netns"), ids or "nothing", pid))
    else:
        lid = pinned_id(os.path.join(d, "link"), "link")
        rec["link_id"] = lid
        holder = holder_pid() if lid is None else 0
        if lid is None and holder and holder in (held or {}).get(pid, []):
            rec["held_by"] = holder
        elif lid is None:
            problems.append("%s: no pinned link at %s/link, and the holder (pid %s) has no perf event of program "
                            "%s" % (name, d, holder, pid))
        elif lid not in links:
            problems.append("%s: pinned link %s not in the kernel's link list" % (name, lid))
        elif links[lid].get("prog_id") != pid:
            problems.append("%s: link %s runs program %s, not %s" % (name, lid, links[lid].get("prog_id"), pid))
    return rec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pin-root", required=True)
    ap.add_argument("--present", default="{}")
    ap.add_argument("--absent", default="[]")
    ap.add_argument("--blocked")
    ap.add_argument("--moves")
    ap.add_argument("--ids", default="/var/lib/hm-matrix/rollout-ids.json")
    args = ap.parse_args()
    problems, out = [], {"programs": {}, "absent": {}}
    try:
        progs = {p["id"]: p for p in bpftool("prog", "show") or []}
        links = kernel_links()
        held = perf_holders()
        for name, attach in sorted(json.loads(args.present).items()):
            out["programs"][name] = check_present(args.pin_root, name, attach, progs, links, problems, held)
        try:
            with open(args.ids) as f:
                seen = json.load(f)
        except (OSError, ValueError):
            seen = {}
        for name in json.loads(args.absent):
            d = os.path.join(args.pin_root, name)
            rec = {"pins_left": sorted(os.listdir(d)) if os.path.isdir(d) else [], "ids_before": seen.get(name)}
            if rec["pins_left"] or os.path.exists(d):
                problems.append("%s: pruned but %s still has %s" % (name, d, rec["pins_left"]))
            before = seen.get(name) or {}
            if not before.get("prog_id"):
                problems.append("%s: no program id recorded for it before the prune (run --present first)" % name)
            if before.get("prog_id") in progs:
                problems.append("%s: program %s still loaded" % (name, before["prog_id"]))
            if before.get("link_id") and before["link_id"] in links:
                problems.append("%s: link %s still in the kernel" % (name, before["link_id"]))
            if before.get("prog_id") in held:
                problems.append("%s: program %s still held by pid %s"
                                % (name, before["prog_id"], held[before["prog_id"]]))
            out["absent"][name] = rec
        if args.blocked:
            prog, mapname, addr = args.blocked.split("/")
            path = os.path.join(args.pin_root, prog, "maps", mapname)
            key = socket.inet_aton(addr)
            before = map_value(path, key)
            sent = 0
            if before is None:
                problems.append("%s: key %s not in %s" % (prog, addr, path))
            else:
                subprocess.run(["ip", "netns", "exec", "hm0", "python3", "-c",
                                "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                                "for _ in range(20):\n"
                                "    s.sendto(bytes(56), ('10.199.1.2', 9)); time.sleep(0.01)\n"], check=True)
                sent = 20
                time.sleep(0.5)
            after = map_value(path, key)
            out["blocked"] = {"map": path, "key": addr, "before": before, "after": after, "sent": sent}
            if before is not None and (after is None or after <= before):
                problems.append("%s: drops counted for %s stayed at %s after %d datagrams from it"
                                % (prog, addr, after, sent))
        if args.moves:
            prog, mapname = args.moves.split("/")
            path = os.path.join(args.pin_root, prog, "maps", mapname)
            before = map_total(path)
            for _i in range(20):
                with open("/etc/hostname") as f:
                    f.read()
            after = map_total(path)
            out["moves"] = {"map": path, "before": before, "after": after}
            if after <= before:
                problems.append("%s: %s stayed at %s while files were opened" % (prog, path, after))
        seen.update({n: {"prog_id": r.get("prog_id"), "link_id": r.get("link_id")}
                     for n, r in out["programs"].items()})
        os.makedirs(os.path.dirname(args.ids), exist_ok=True)
        with open(args.ids, "w") as f:
            json.dump(seen, f)
    except (RuntimeError, ValueError, OSError, subprocess.CalledProcessError) as e:
        problems.append("checker: %s" % e)
    out["problems"] = problems
    print(json.dumps(out, sort_keys=True))


if __name__ == "__main__":
    main()
