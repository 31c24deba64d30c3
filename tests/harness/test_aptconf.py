"""The mirror and proxy are read from this host's apt configuration, never from the tree."""
import pytest

from harness import aptconf

DEB822 = """Types: deb
# a comment
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
"""


def test_deb822_main_archive_first():
    uris = aptconf._deb822_uris(DEB822)
    assert uris == ["http://mirror.example/debian", "http://mirror.example/debian-security"]
    assert aptconf.pick_mirror(uris) == "http://mirror.example/debian"


def test_deb822_skips_deb_src_and_disabled():
    text = "Types: deb-src\nURIs: http://a/debian\n\nEnabled: no\nTypes: deb\nURIs: http://b/debian\n"
    assert aptconf._deb822_uris(text) == []


@pytest.mark.parametrize("line, uri", [
    ("deb http://m/debian bookworm main", "http://m/debian"),
    ("deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main", "http://m/debian"),
    ("deb [trusted=yes] http://m/debian/ sid main  # note", "http://m/debian/"),
])
def test_one_line_sources(line, uri):
    assert aptconf._one_line_uris("# head\n" + line + "\ndeb-src http://x/debian sid main\n") == [uri]


def test_pick_mirror_skips_security_and_non_http():
    assert aptconf.pick_mirror(["file:/srv/repo", "http://s/debian-security", "https://m/debian/"]) == "https://m/debian"
    assert aptconf.pick_mirror(["http://s/debian-security"]) is None


def test_host_mirror_reads_sources_d(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert aptconf.host_mirror(str(tmp_path)) == "http://mirror.example/debian"


def test_host_mirror_falls_back_to_sources_list(tmp_path):
    (tmp_path / "sources.list").write_text("deb http://m/debian bookworm main\n")
    assert aptconf.host_mirror(str(tmp_path)) == "http://m/debian"


def test_host_mirror_none_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="no Debian mirror"):
        aptconf.host_mirror(str(tmp_path))


@pytest.mark.parametrize("dump, proxy", [
    ('Acquire::http::Proxy "http://proxy:3128/";\n', "http://proxy:3128/"),
    ('Acquire::http::Proxy "DIRECT";\n', None),
    ('APT::Architecture "amd64";\n', None),
])
def test_apt_proxy(dump, proxy):
    assert aptconf.parse_apt_proxy(dump) == proxy


def test_env_proxy_wins():
    assert aptconf.host_proxy({"http_proxy": "http://p:1/"}) == "http://p:1/"


@pytest.mark.parametrize("host, guest", [
    ("http://127.0.0.1:3142/", "http://10.0.2.2:3142/"),
    ("http://localhost:3128", "http://10.0.2.2:3128"),
    ("http://proxy.lan:3128", "http://proxy.lan:3128"),
    (None, None),
])
def test_proxy_as_the_guest_sees_it(host, guest):
    assert aptconf.proxy_for_guest(host) == guest
