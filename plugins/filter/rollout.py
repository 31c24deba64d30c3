# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The controller's side of the role ebpf_programs: what to send to ebpf_state.

- rollout_plan: the role's `ebpf_programs` checked (unique names, objects that exist, one attach point, a map for
  a counter health check) and turned into ebpf_state's `programs` (objects by digest in the host's
  content-addressed store), `objects` and `reapply_code` without contents; the digests are read here.
- rollout_uploads: the same `objects` and `reapply_code` with the contents of only what the host said it lacks
  (the `missing` of the first ebpf_state run), each read again and checked against the plan's digest.

Docs: rollout_plan.yml and rollout_uploads.yml beside this file.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import base64
import hashlib
import os

from collections.abc import Mapping

from ansible.errors import AnsibleFilterError

from ansible_collections.hypermesh.ebpf.plugins.module_utils._state.state_install import code_digest, code_names

INVALID = "ebpf_programs is not valid, nothing changed: "
ATTACH_POINTS = ("xdp", "tc", "tcx", "tracepoint", "raw_tracepoint", "kprobe", "kretprobe", "fentry", "fexit",
                 "lsm", "cgroup", "uprobe", "uretprobe")
MAP_KEYS = ("map", "entries", "state", "exact", "key_format", "value_format")
HEALTH_KEYS = ("check", "map", "key", "field", "key_format", "value_format", "timeout")


def _plain(value):
    """A copy made of dicts, lists and scalars (templating whatever is still a template)."""
    if isinstance(value, Mapping):
        return dict((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _digest_file(path):
    """(sha256, None) of a regular file on the controller, else (None, why)."""
    if not os.path.exists(path):
        return None, "does not exist on the controller"
    if not os.path.isfile(path):
        return None, "is not a regular file"
    try:
        return hashlib.sha256(_read(path)).hexdigest(), None
    except (IOError, OSError) as e:
        return None, "cannot be read (%s)" % (e.strerror or e)


def _code_files(module_utils_dir):
    """{"<package>/<file>.py": bytes} of the collection's module_utils (state_install.code_names)."""
    try:
        names = code_names(module_utils_dir, strict=False)
        files = dict((n, _read(os.path.join(module_utils_dir, n))) for n in names)
    except ValueError as e:
        raise AnsibleFilterError("the collection's module_utils in %s: %s" % (module_utils_dir, e))
    except (IOError, OSError) as e:
        raise AnsibleFilterError("cannot read the collection's module_utils in %s: %s" % (module_utils_dir, e))
    if not files:
        raise AnsibleFilterError("no module_utils (*.py) in %s" % module_utils_dir)
    return files


def _attach(name, given, problems):
    """The attach dict without empty points; a problem unless exactly one known point is left."""
    points = dict((k, v) for k, v in given.items() if v is not None) if isinstance(given, dict) else {}
    if len(points) != 1:
        problems.append("%s: attach needs one attach point%s" % (
            name, (", got %s" % ", ".join(sorted(points))) if points else ""))
    elif list(points)[0] not in ATTACH_POINTS:
        problems.append("%s: attach point %s is not one of %s" % (name, list(points)[0], ", ".join(ATTACH_POINTS)))
    return points


def _health(name, given, health_timeout, problems):
    if given is None:
        given = {}
    if not isinstance(given, dict):
        problems.append("%s: health must be a dict" % name)
        return {}
    health = dict((k, given[k]) for k in HEALTH_KEYS if given.get(k) is not None)
    health.setdefault("check", "run_count")
    health.setdefault("timeout", health_timeout)
    if health["check"] == "counter" and not health.get("map"):
        problems.append("%s: health.check=counter needs health.map" % name)
    return health


def _maps(name, given, problems):
    out = []
    for i, m in enumerate(given or []):
        if not isinstance(m, dict) or not m.get("map"):
            problems.append("%s: maps[%d] needs `map`" % (name, i))
            continue
        out.append(dict((k, m[k]) for k in MAP_KEYS if m.get(k) is not None))
    return out


def rollout_plan(ebpf_programs, playbook_dir, objects_dir, module_utils_dir, health_timeout=30):
    """The plan of one rollout (see rollout_plan.yml); AnsibleFilterError listing every problem of the list."""
    programs = _plain(ebpf_programs)
    if programs is None:
        programs = []
    if not isinstance(programs, list):
        raise AnsibleFilterError(INVALID + "it must be a list of programs, got %s" % type(programs).__name__)
    problems = []
    names = []
    digests = {}        # controller path -> sha256 (each object read once)
    sources = {}        # sha256 -> controller path
    objects = []
    out = []
    for i, p in enumerate(programs):
        if not isinstance(p, dict) or not p.get("name") or not isinstance(p["name"], str):
            problems.append("ebpf_programs[%d] needs a name" % i)
            continue
        name = p["name"]
        if name in names:
            if names.count(name) == 1:
                problems.append("name %s is listed more than once" % name)
            names.append(name)
            continue
        names.append(name)

        attach = _attach(name, p.get("attach"), problems)

        sha = None
        if not p.get("object"):
            problems.append("%s: object is required" % name)
        else:
            source = os.path.normpath(os.path.join(playbook_dir, os.path.expanduser(str(p["object"]))))
            if source not in digests:
                digests[source] = _digest_file(source)
            sha, why = digests[source]
            if why:
                problems.append("%s: object %s %s" % (name, source, why))
            elif sha not in sources:
                sources[sha] = source
                objects.append({"sha256": sha})

        program = {"name": name, "object": os.path.join(objects_dir, "%s.bpf.o" % sha) if sha else None,
                   "sha256": sha, "program": p.get("program") or None, "state": p.get("state") or "attached",
                   "attach": attach, "force": bool(p.get("force", False)),
                   "maps": _maps(name, p.get("maps"), problems),
                   "health": _health(name, p.get("health"), health_timeout, problems)}
        if p.get("globals") is not None:  # only when given: the plan of a program without them stays as it was
            if isinstance(p["globals"], dict):
                program["globals"] = dict(p["globals"])
            else:
                problems.append("%s: globals must be a dict of {variable: value}" % name)
        out.append(program)
    if problems:
        raise AnsibleFilterError(INVALID + "; ".join(problems))

    code = _code_files(module_utils_dir)
    return {"programs": out, "objects": objects, "sources": sources,
            "reapply_code": {"digest": code_digest(code)},
            "code_dir": os.path.normpath(module_utils_dir),
            "code_files": dict((n, hashlib.sha256(code[n]).hexdigest()) for n in code)}


def _b64(data):
    return base64.b64encode(data).decode("ascii")


def rollout_uploads(plan, first_result):
    """`objects` and `reapply_code` for ebpf_state with the contents of what first_result's `missing` names."""
    plan = _plain(plan)
    missing = _plain((first_result or {}).get("missing")) or {}
    wanted = set(missing.get("objects") or [])
    unknown = sorted(wanted - set(plan["sources"]))
    if unknown:
        raise AnsibleFilterError("the host asked for objects this rollout does not use: %s" % ", ".join(unknown))
    objects = []
    for o in plan["objects"]:
        sha = o["sha256"]
        if sha not in wanted:
            objects.append({"sha256": sha})
            continue
        path = plan["sources"][sha]
        try:
            data = _read(path)
        except (IOError, OSError) as e:
            raise AnsibleFilterError("object %s: cannot be read (%s)" % (path, e))
        if hashlib.sha256(data).hexdigest() != sha:
            raise AnsibleFilterError("object %s changed on the controller during the rollout (was sha256 %s)"
                                     % (path, sha))
        objects.append({"sha256": sha, "content": _b64(data)})

    code = {"digest": plan["reapply_code"]["digest"]}
    if missing.get("code"):
        files = _code_files(plan["code_dir"])
        now = dict((n, hashlib.sha256(files[n]).hexdigest()) for n in files)
        if now != plan["code_files"] or code_digest(files) != code["digest"]:
            raise AnsibleFilterError("the collection's module_utils in %s changed on the controller during the "
                                     "rollout" % plan["code_dir"])
        code["files"] = [{"name": n, "content": _b64(files[n])} for n in sorted(files)]
    return {"objects": objects, "reapply_code": code}


class FilterModule(object):
    def filters(self):
        return {"rollout_plan": rollout_plan, "rollout_uploads": rollout_uploads}
