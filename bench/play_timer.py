"""Per-task wall times of one ansible-playbook run, as Ansible itself measures them.

The benches that compare tasks in one playbook (the steady state of an operator's play: ansible-core builds
each module's payload once per run, and every later task of that module only runs it) name their timed tasks
"T <side> <n>" and read the times back from ansible-core's junit callback (task start to result).

    times = run_tasks(tasks, python)    # {side: [seconds, ...]} of the tasks named "T <side> <n>"
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(TOP, ".cache", "collections")
# the venv's Python (scripts/bootstrap.sh), else this one
PYTHON = os.path.join(TOP, ".venv", "bin", "python")
if not os.path.exists(PYTHON):
    PYTHON = sys.executable


def timed(side, n, module, args, **extra):
    """A task whose time is kept under `side`."""
    task = {"name": "T %s %d" % (side, n), module: args}
    task.update(extra)
    return task


def untimed(name, module, args, **extra):
    task = {"name": name, module: args}
    task.update(extra)
    return task


def ansible_env(**extra):
    """The environment of a bench's Ansible run: this repository's ansible.cfg and collection."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
               LANG="C")
    env.update(extra)
    return env


def durations(junit_dir):
    """{side: [seconds]} from the junit callback's XML (it names a case "[host] play: T side n")."""
    out = {}
    for path in glob.glob(os.path.join(junit_dir, "*.xml")):
        for case in ET.parse(path).getroot().iter("testcase"):
            m = re.search(r"\bT (\w+) \d+\b", case.get("name", ""))
            if m:
                out.setdefault(m.group(1), []).append(float(case.get("time")))
    return out


def run_tasks(tasks, python):
    """Run `tasks` in one play on localhost (local connection, `python` as the interpreter); {side: [s]}.
    Raises RuntimeError with the end of Ansible's output when the playbook fails."""
    work = tempfile.mkdtemp(prefix="hm-bench-play-")
    try:
        playbook = os.path.join(work, "bench.yml")
        with open(playbook, "w") as f:
            json.dump([{"hosts": "localhost", "connection": "local", "gather_facts": False,
                        "vars": {"ansible_python_interpreter": python}, "tasks": tasks}], f)  # JSON is YAML
        env = ansible_env(ANSIBLE_CALLBACKS_ENABLED="junit", JUNIT_OUTPUT_DIR=os.path.join(work, "junit"),
                          JUNIT_TASK_CLASS="yes", JUNIT_HIDE_TASK_ARGUMENTS="yes", ANSIBLE_STDOUT_CALLBACK="minimal")
        proc = subprocess.run([os.path.join(os.path.dirname(python), "ansible-playbook"), "-i", "localhost,",
                               playbook], capture_output=True, text=True, env=env, cwd=TOP, check=False)
        if proc.returncode != 0:
            raise RuntimeError("bench playbook failed:\n%s\n%s" % (proc.stdout[-3000:], proc.stderr[-2000:]))
        return durations(os.path.join(work, "junit"))
    finally:
        shutil.rmtree(work, ignore_errors=True)
