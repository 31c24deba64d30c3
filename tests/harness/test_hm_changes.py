"""The matrix's hm_changes callback (extensions/molecule/default/callback_plugins/) under a real ansible-playbook
run: per play and host the PLAY RECAP counts, the changed tasks, and the module runs on the host (loop items one
each; not skipped, not delegated to the controller, not set_fact/debug/assert/meta/raw, not a task that failed
before its module ran)."""
import json
import os
import subprocess
import sys

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAY = """
- name: counted
  hosts: all
  gather_facts: false
  tasks:
    - name: a module
      ansible.builtin.command: "true"
      changed_when: false
    - name: a loop of three, one skipped
      ansible.builtin.command: "echo {{ item }}"
      loop: [1, 2, 3]
      when: item != 2
    - name: no_log
      ansible.builtin.command: "true"
      no_log: true
    - name: a module that fails
      ansible.builtin.command: "false"
      ignore_errors: true
    - name: fails before its module runs
      ansible.builtin.command: "echo {{ undefined_here }}"
      ignore_errors: true
    - name: on the controller
      ansible.builtin.stat: {path: /}
      delegate_to: localhost
    - name: skipped
      ansible.builtin.command: "true"
      when: false
    - name: a fact
      ansible.builtin.set_fact: {x: 1}
    - name: a fact, no_log
      ansible.builtin.set_fact: {y: 1}
      no_log: true
    - name: a debug
      ansible.builtin.debug: {msg: hi}
    - name: an assert
      ansible.builtin.assert: {that: [true], quiet: true}
    - name: a raw command
      ansible.builtin.raw: "true"
      changed_when: false
    - name: meta
      ansible.builtin.meta: noop
- name: second
  hosts: all
  gather_facts: false
  tasks:
    - name: changes
      ansible.builtin.command: "true"
"""


def test_module_runs_per_play_and_host(tmp_path):
    play = tmp_path / "side_effect.yml"
    play.write_text(PLAY)
    env = dict(os.environ, HYPERMESH_RESULTS=str(tmp_path / "results"), ANSIBLE_CALLBACKS_ENABLED="hm_changes",
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(TOP, "extensions", "molecule", "default", "callback_plugins"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", ANSIBLE_INVENTORY_UNPARSED_WARNING="0")
    playbook = os.path.join(os.path.dirname(sys.executable), "ansible-playbook")
    p = subprocess.run([playbook, "-i", "h1,", "-c", "local", "-e", "ansible_python_interpreter=%s" % sys.executable,
                        str(play)], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    doc = json.loads((tmp_path / "results" / "plays-side_effect.json").read_text())
    first, second = doc["plays"]
    h = first["hosts"]["h1"]
    assert h["module_tasks"] == ["a module", "a loop of three, one skipped", "a loop of three, one skipped",
                                 "no_log", "a module that fails"]
    assert h["module_runs"] == 5
    assert h["changed"] == 2 and h["changed_tasks"] == ["a loop of three, one skipped", "no_log"]
    assert h["skipped"] == 1
    assert second["hosts"]["h1"]["module_runs"] == 1 and second["hosts"]["h1"]["changed_tasks"] == ["changes"]
    assert [t[0] for t in first["tasks"]][:2] == ["a module", "a loop of three, one skipped"]
    assert first["seconds"] is not None
