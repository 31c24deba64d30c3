"""molecule prepare's .deb fetch on the controller: what the guest printed is data. A line that is not
`'URL' FILE SIZE SHA256:HEX` is refused before anything is fetched (no shell, no file outside DIR); a good one is
fetched over loopback, checked against its digest and renamed into place."""
import hashlib
import http.server
import importlib.util
import os
import subprocess
import sys
import threading

import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(os.path.dirname(HERE))
DEFAULT = os.path.join(TOP, "extensions", "molecule", "default")
SCRIPT = os.path.join(DEFAULT, "files", "fetch_debs.py")

spec = importlib.util.spec_from_file_location("fetch_debs", SCRIPT)
fetch_debs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_debs)

SHA = "SHA256:" + "0" * 64


def run(directory, text):
    return subprocess.run([sys.executable, SCRIPT, directory], input=text, capture_output=True, text=True,
                          check=False)


@pytest.mark.parametrize("line", [
    "'http://m/debian/$(touch {marker})' libbpf1.deb 10 " + SHA,
    "'http://m/debian/a.deb' a;touch${{IFS}}{marker};.deb 10 " + SHA,
    "'http://m/debian/a.deb' `touch {marker}`.deb 10 " + SHA,
    "'http://m/debian/a.deb' ../../{marker}.deb 10 " + SHA,
    "'http://m/debian/a.deb' a.deb 10 " + SHA + " ; touch {marker}",
    "'file:///etc/shadow' shadow.deb 10 " + SHA,
    "'http://m/debian/../../x' x.deb 10 " + SHA,
    "'http://m/debian/a.deb' a.deb 10",
    "'http://m/debian/a.deb' .hidden.deb 10 " + SHA,
])
def test_a_line_that_is_not_a_plain_uri_is_refused_and_nothing_happens(tmp_path, line):
    marker = str(tmp_path / "pwned")
    good = "'http://m/debian/pool/main/b/bpftool_7.1.0+6.1.0-1_amd64.deb' bpftool_7.1.0+6.1.0-1_amd64.deb 1 " + SHA
    debs = tmp_path / "debs"
    proc = run(str(debs), "Reading package lists...\n" + good + "\n" + line.format(marker=marker) + "\n")
    assert proc.returncode == 1 and "refused, nothing fetched" in proc.stderr, proc
    assert not os.path.exists(marker) and os.listdir(str(tmp_path)) == []  # nothing run, nothing made


def test_parse_keeps_urls_names_and_digests_and_skips_apt_chatter():
    text = ("Reading package lists...\r\n"
            "'http://deb.debian.org/debian/pool/main/libb/libbpf/libbpf1_1%3a1.1.0-1_amd64.deb' "
            "libbpf1_1%3a1.1.0-1_amd64.deb 160260 SHA256:" + "ab" * 32 + "\r\n")
    url = "http://deb.debian.org/debian/pool/main/libb/libbpf/libbpf1_1%3a1.1.0-1_amd64.deb"
    assert fetch_debs.parse(text) == [(url, "libbpf1_1%3a1.1.0-1_amd64.deb", 160260, ("sha256", "ab" * 32))]


@pytest.fixture
def loopback(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, "http://127.0.0.1:%d" % server.server_port
    server.shutdown()
    server.server_close()


def test_a_good_line_is_fetched_and_checked(tmp_path, loopback):
    www, base = loopback
    data = b"!<arch>\n" + os.urandom(1000)
    (www / "x_1.0_all.deb").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    debs = tmp_path / "debs"
    line = "'%s/x_1.0_all.deb' x_1.0_all.deb %d SHA256:%s\n" % (base, len(data), sha)
    proc = run(str(debs), line)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc
    assert (debs / "x_1.0_all.deb").read_bytes() == data
    assert os.stat(str(debs / "x_1.0_all.deb")).st_mode & 0o777 == 0o644

    bad = "'%s/x_1.0_all.deb' y_1.0_all.deb %d SHA256:%s\n" % (base, len(data), "1" * 64)
    proc = run(str(debs), bad)
    assert proc.returncode != 0 and "not the file apt named" in proc.stderr
    assert sorted(os.listdir(str(debs))) == ["x_1.0_all.deb"]  # no temporary, no y


def test_prepare_gives_the_guests_lines_to_no_shell():
    with open(os.path.join(DEFAULT, "prepare.yml")) as f:
        play = yaml.safe_load(f)[0]

    def tasks(items):
        for t in items:
            yield t
            for key in ("block", "rescue", "always"):
                yield from tasks(t.get(key, []))

    for task in tasks(play["tasks"]):
        text = yaml.safe_dump(task)
        if "hm_uris" in text and task.get("delegate_to") == "localhost":
            assert set(task) & set(["ansible.builtin.command"]), task
            assert "argv" in task["ansible.builtin.command"] and "hm_uris" in task["ansible.builtin.command"]["stdin"]
            assert not any("hm_uris" in a for a in task["ansible.builtin.command"]["argv"])
        assert "ansible.builtin.shell" not in task or "hm_uris" not in text, task
