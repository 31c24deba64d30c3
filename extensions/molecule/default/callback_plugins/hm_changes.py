"""Per play and per host: ok, changed, failed and skipped task counts, the names of the changed tasks, and the
module runs on the host; per play its start and end time and every task's [name, start, seconds] (all hosts
together), written to <results>/plays-<playbook>.json at the start of every play and at the end of the run.
The side_effect playbook reads it to assert that the rollout it just ran changed something (first rollout) or
nothing at all (second rollout), and how many module runs each cost a host: the same counts as Ansible's PLAY
RECAP, per play, plus `module_runs` and `module_tasks` (the task name of each run, loop items one each).

A module run is a task result (a loop's item counts alone) that ran a module on the host itself: the result
carries the module's `invocation` (or its raw output, when the module crashed), or is censored (no_log) from an
action that runs one. Not counted: skipped results, results delegated to the controller (delegate_to
localhost), the actions that run no module on the host (set_fact, debug, assert, fail, meta, include/import,
raw, ...), and a task that failed before its module ran (an undefined variable). What an action plugin runs
besides (the `stat` before a `copy`) is not seen here.
<results> is $HYPERMESH_RESULTS, else <molecule ephemeral directory>/results.
"""
from __future__ import absolute_import, division, print_function

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: hm_changes
type: aggregate
short_description: task counts and module runs per play and host, as JSON, for the kernel matrix
description: Writes <results>/plays-<playbook>.json (see the module docstring).
requirements: [enable in callbacks_enabled]
"""

# Actions that run no module on the host (controller-side, or a plain command over the connection).
NO_MODULE = frozenset([
    "add_host", "assert", "debug", "fail", "group_by", "import_playbook", "import_role", "import_tasks",
    "include", "include_role", "include_tasks", "include_vars", "meta", "pause", "raw", "set_fact", "set_stats",
    "validate_argument_spec"])
CONTROLLER = frozenset(["localhost", "127.0.0.1", "::1"])


def _name(result):
    """The task's name without its role's prefix (what the playbook or role wrote)."""
    return result._task.name or result._task.get_name()


def ran_module(result):
    """Whether this result (a task's, or one loop item's) is a module run on the host (module docstring)."""
    res = result._result
    if not isinstance(res, dict) or res.get("skipped"):
        return False
    delegated = res.get("_ansible_delegated_vars") or {}
    if delegated and (delegated.get("ansible_connection") == "local" or delegated.get("ansible_host") in CONTROLLER):
        return False
    if "invocation" in res or "module_stdout" in res or "module_stderr" in res:
        return True
    if res.get("censored"):  # no_log: the result says nothing, the action does
        return (result._task.action or "").rsplit(".", 1)[-1] not in NO_MODULE
    return False


def _is_loop(result):
    return isinstance(result._result.get("results"), list) and bool(result._task.loop or result._task.loop_with)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hm_changes"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.plays = []
        self.path = None

    def v2_playbook_on_start(self, playbook):
        results = os.environ.get("HYPERMESH_RESULTS") or os.path.join(
            os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"), "results")
        name = os.path.splitext(os.path.basename(playbook._file_name))[0]
        self.path = os.path.join(results, "plays-%s.json" % name)

    def _dump(self):
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"plays": self.plays}, f, indent=1)
        os.replace(tmp, self.path)

    def _end_task(self):
        if self.plays and self.plays[-1]["tasks"] and len(self.plays[-1]["tasks"][-1]) == 2:
            name, start = self.plays[-1]["tasks"][-1]
            self.plays[-1]["tasks"][-1] = [name, start, round(time.time() - start, 1)]

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._end_task()
        if self.plays:
            self.plays[-1]["tasks"].append([task.name or task.get_name(), time.time()])

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def _end_play(self):
        self._end_task()
        if self.plays and self.plays[-1]["end"] is None:
            self.plays[-1]["end"] = time.time()
            self.plays[-1]["seconds"] = round(self.plays[-1]["end"] - self.plays[-1]["start"], 1)

    def v2_playbook_on_play_start(self, play):
        self._end_play()
        self.plays.append({"index": len(self.plays), "name": play.get_name(), "start": time.time(), "end": None,
                           "hosts": {}, "tasks": []})
        self._dump()

    def _host(self, result):
        if not self.plays:
            return {}
        return self.plays[-1]["hosts"].setdefault(result._host.get_name(), {
            "ok": 0, "changed": 0, "failed": 0, "skipped": 0, "changed_tasks": [], "failed_tasks": [],
            "module_runs": 0, "module_tasks": []})

    def _count_run(self, result):
        """One module run for the task's result, unless it is a loop's (its items were counted one by one)."""
        rec = self._host(result)
        if rec and ran_module(result):
            rec["module_runs"] += 1
            rec["module_tasks"].append(_name(result))

    def v2_runner_on_ok(self, result):
        rec = self._host(result)
        if not rec:
            return
        rec["ok"] += 1
        if result._result.get("changed", False):
            rec["changed"] += 1
            rec["changed_tasks"].append(_name(result))
        if not _is_loop(result):
            self._count_run(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        rec = self._host(result)
        if rec and not ignore_errors:
            rec["failed"] += 1
            rec["failed_tasks"].append(_name(result))
        if rec and not _is_loop(result):
            self._count_run(result)

    def v2_runner_on_skipped(self, result):
        rec = self._host(result)
        if rec:
            rec["skipped"] += 1

    def v2_runner_item_on_ok(self, result):
        self._count_run(result)

    def v2_runner_item_on_failed(self, result):
        self._count_run(result)

    def v2_playbook_on_stats(self, stats):
        self._end_play()
        self._dump()
