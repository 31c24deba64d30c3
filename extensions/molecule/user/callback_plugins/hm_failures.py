"""The failed tasks of a playbook run, per host, with their message: <results>/failures-<playbook>.json, a list
of {play, task, host, msg}, written at the end of the run (and whenever a task fails). The user scenario's
report shows them next to the guest's kernel. <results> is $HYPERMESH_RESULTS, else
<molecule ephemeral directory>/results (as for hm_changes).
"""
from __future__ import absolute_import, division, print_function

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: hm_failures
type: aggregate
short_description: failed tasks and their messages, per host, as JSON, for the user's kernel matrix
description: Writes <results>/failures-<playbook>.json (see the module docstring).
requirements: [enable in callbacks_enabled]
"""

MSG_CHARS = 2000


def message(result):
    """The failure's message: the module's msg, else its stderr, else the whole result (cut short)."""
    res = result._result
    items = [r.get("msg") for r in res.get("results") or [] if isinstance(r, dict) and r.get("failed")]
    if any(items):  # a loop: its items' messages, not "One or more items failed"
        return "; ".join(str(m) for m in items if m)[:MSG_CHARS]
    msg = res.get("msg") or res.get("stderr") or res.get("stdout") or json.dumps(res, default=str)
    return str(msg)[:MSG_CHARS]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hm_failures"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.failures = []
        self.play = None
        self.path = None

    def v2_playbook_on_start(self, playbook):
        results = os.environ.get("HYPERMESH_RESULTS") or os.path.join(
            os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "/tmp"), "results")
        name = os.path.splitext(os.path.basename(playbook._file_name))[0]
        self.path = os.path.join(results, "failures-%s.json" % name)
        self._dump()

    def v2_playbook_on_play_start(self, play):
        self.play = play.get_name()

    def _dump(self):
        if not self.path:
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.failures, f, indent=1)
        os.replace(tmp, self.path)

    def _add(self, result, msg):
        self.failures.append({"play": self.play, "task": result._task.name or result._task.get_name(),
                              "host": result._host.get_name(), "msg": msg})
        self._dump()

    def v2_runner_on_failed(self, result, ignore_errors=False):
        if not ignore_errors:
            self._add(result, message(result))

    def v2_runner_on_unreachable(self, result):
        self._add(result, "unreachable: " + message(result))

    def v2_playbook_on_stats(self, stats):
        self._dump()
