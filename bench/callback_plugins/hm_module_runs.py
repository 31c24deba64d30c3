"""Callback plugin of the rollout bench: module runs per host, and the play's wall time.

Enabled by bench_rollout.py (ANSIBLE_CALLBACK_PLUGINS=bench/callback_plugins, ANSIBLE_CALLBACKS_ENABLED=
hm_module_runs, HM_BENCH_RUNS_OUT=<file>); at the end of the playbook it writes <file> as JSON:

  play_s        seconds from the first play's start to the end of the last (time.monotonic(), in this process)
  hosts         {host: {"module_runs": N, "controller_runs": N, "executions": N, "commands": N}}
  tasks         [{"host", "task", "action", "runs", "executions", "delegated", "changed", "s", "commands_s"}]
                in the order of the results; s: from the task's start to its result; commands_s: the time spent
                in the commands the task ran through the connection (the module on the host); build_s: in
                building the modules' payloads (ActionBase._configure_module: finding the module and the
                module_utils it imports, the AnsiballZ zip; ansible-core caches a payload for the rest of the
                run); the rest of s is the controller's too (templating, the worker, the action plugin)

Two counts of module runs, both per host:
- module_runs: task results (a loop's items each) that ran a module on the host: not skipped, not an action
  that runs on the controller only (CONTROLLER_ONLY: set_fact, debug, assert, fail, meta, includes, ...), not
  delegated to localhost (those are `controller_runs`). This is the count issue #14 states its targets in.
- executions: the module payloads (AnsiballZ) actually executed, counted where every action plugin executes
  one: ActionBase._execute_module, wrapped in this (controller) process before the workers fork, each call
  appending one line to <file>.exec. An action plugin may execute more than one module for one task result
  (ansible.builtin.copy runs `stat` first, then `copy`), which the first count does not show.
- commands: every command the action plugins ran through the connection (ActionBase._low_level_execute_command:
  the module executions above, plus making and removing remote temporary directories, chmod, ...), excluding
  the ones delegated to localhost.
Bench code only; not part of the collection (galaxy.yml's build_ignore leaves bench/ out).
"""
from __future__ import absolute_import, division, print_function

import json
import os
import time

from ansible.plugins.action import ActionBase
from ansible.plugins.callback import CallbackBase

__metaclass__ = type

DOCUMENTATION = """
name: hm_module_runs
type: aggregate
short_description: Count module runs per host and time the play (bench only)
description:
  - Writes the counts and the play's wall time as JSON to the file named by the environment variable
    HM_BENCH_RUNS_OUT.
requirements:
  - HM_BENCH_RUNS_OUT in the environment
"""

CONTROLLER_ONLY = frozenset((
    "add_host", "assert", "debug", "fail", "group_by", "import_playbook", "import_role", "import_tasks",
    "include", "include_role", "include_tasks", "include_vars", "meta", "pause", "set_fact", "set_stats",
    "validate_argument_spec",
))
LOCALHOST = frozenset(("localhost", "127.0.0.1", "::1"))


def _short(action):
    for prefix in ("ansible.builtin.", "ansible.legacy."):
        if action.startswith(prefix):
            return action[len(prefix):]
    return action


def _delegated_to_localhost(task):
    return (getattr(task, "delegate_to", None) or "") in LOCALHOST


def _log_line(path, record):
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _wrap(kind, func):
    def wrapper(self, *args, **kwargs):
        path = os.environ.get("HM_BENCH_RUNS_OUT")
        start = time.monotonic()
        try:
            return func(self, *args, **kwargs)
        finally:
            if path:
                task = getattr(self, "_task", None)
                module = kwargs.get("module_name") or (args[0] if args and kind == "execution" else None)
                _log_line(path + ".exec", {
                    "kind": kind, "host": (getattr(self, "_hm_host", None) or "?"),
                    "task_uuid": getattr(task, "_uuid", None), "module": module or getattr(task, "action", None),
                    "delegated": bool(task is not None and _delegated_to_localhost(task)),
                    "s": time.monotonic() - start})
    wrapper.hm_wrapped = True
    return wrapper


def _wrap_run(func):
    """ActionBase.run gets task_vars: note the inventory host for the counts above."""
    def wrapper(self, tmp=None, task_vars=None):
        self._hm_host = (task_vars or {}).get("inventory_hostname")
        return func(self, tmp, task_vars)
    wrapper.hm_wrapped = True
    return wrapper


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "hm_module_runs"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.out = os.environ.get("HM_BENCH_RUNS_OUT")
        self.started = None
        self.task_started = {}
        self.results = []
        if self.out and not getattr(ActionBase._execute_module, "hm_wrapped", False):
            ActionBase._execute_module = _wrap("execution", ActionBase._execute_module)
            ActionBase._low_level_execute_command = _wrap("command", ActionBase._low_level_execute_command)
            ActionBase._configure_module = _wrap("build", ActionBase._configure_module)
        # every action plugin's run() calls ActionBase.run (super) first: the host is known from there
        if self.out and not getattr(ActionBase.run, "hm_wrapped", False):
            ActionBase.run = _wrap_run(ActionBase.run)

    def v2_playbook_on_play_start(self, play):
        if self.started is None:
            self.started = time.monotonic()

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.task_started[task._uuid] = time.monotonic()

    def _record(self, result, skipped=False):
        task = result.task
        res = result.result
        if isinstance(res.get("results"), list) and not skipped:
            runs = len([r for r in res["results"] if isinstance(r, dict) and not r.get("skipped")])
        else:
            runs = 0 if skipped else 1
        controller = _short(task.action) in CONTROLLER_ONLY
        delegated = _delegated_to_localhost(task)
        self.results.append({
            "host": result.host.name, "task": task.get_name(), "action": task.action, "uuid": task._uuid,
            "runs": 0 if controller else runs, "delegated": delegated, "changed": bool(res.get("changed")),
            "s": round(time.monotonic() - self.task_started.get(task._uuid, time.monotonic()), 3)})

    def v2_runner_on_ok(self, result):
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result)

    def v2_runner_on_unreachable(self, result):
        self._record(result)

    def v2_runner_on_skipped(self, result):
        self._record(result, skipped=True)

    def v2_playbook_on_stats(self, stats):
        if not self.out:
            return
        play_s = time.monotonic() - self.started if self.started is not None else None
        executions = []
        if os.path.exists(self.out + ".exec"):
            with open(self.out + ".exec") as f:
                executions = [json.loads(line) for line in f if line.strip()]
        hosts = {}
        for r in self.results:
            h = hosts.setdefault(r["host"], {"module_runs": 0, "controller_runs": 0, "executions": 0,
                                             "commands": 0})
            h["controller_runs" if r["delegated"] else "module_runs"] += r["runs"]
            mine = [e for e in executions if e["task_uuid"] == r["uuid"] and e["host"] == r["host"]]
            r["executions"] = len([e for e in mine if e["kind"] == "execution"])
            r["commands_s"] = round(sum(e["s"] for e in mine if e["kind"] == "command"), 3)
            r["build_s"] = round(sum(e["s"] for e in mine if e["kind"] == "build"), 3)
        for e in executions:
            if e["delegated"] or e["host"] not in hosts or e["kind"] == "build":
                continue
            hosts[e["host"]]["executions" if e["kind"] == "execution" else "commands"] += 1
        with open(self.out, "w") as f:
            json.dump({"play_s": play_s, "hosts": hosts, "tasks": self.results}, f, indent=1)
