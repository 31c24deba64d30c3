"""Per play and per host: ok, changed, failed and skipped task counts, the names of the changed tasks; per play
its start and end time and every task's [name, start, seconds] (all hosts together), written to
<results>/plays-<playbook>.json at the start of every play and at the end of the run. The side_effect playbook
reads it to assert that the rollout it just ran changed something (first rollout) or nothing at all (second
rollout): the same counts as Ansible's PLAY RECAP, per play.
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
short_description: task counts per play and host, as JSON, for the kernel matrix
description: Writes <results>/plays-<playbook>.json (see the module docstring).
requirements: [enable in callbacks_enabled]
"""


def _name(result):
    """The task's name without its role's prefix (what the playbook or role wrote)."""
    return result._task.name or result._task.get_name()


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
            "ok": 0, "changed": 0, "failed": 0, "skipped": 0, "changed_tasks": [], "failed_tasks": []})

    def v2_runner_on_ok(self, result):
        rec = self._host(result)
        if not rec:
            return
        rec["ok"] += 1
        if result._result.get("changed", False):
            rec["changed"] += 1
            rec["changed_tasks"].append(_name(result))

    def v2_runner_on_failed(self, result, ignore_errors=False):
        rec = self._host(result)
        if rec and not ignore_errors:
            rec["failed"] += 1
            rec["failed_tasks"].append(_name(result))

    def v2_runner_on_skipped(self, result):
        rec = self._host(result)
        if rec:
            rec["skipped"] += 1

    def v2_playbook_on_stats(self, stats):
        self._end_play()
        self._dump()
