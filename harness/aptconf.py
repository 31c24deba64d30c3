"""Read this host's apt configuration at run time: the Debian mirror and any http proxy.

No mirror host name is ever written into the tree: the harness asks the host each run.
"""
import glob
import os
import re
import subprocess


def _deb822_uris(text):
    """URIs of `Types: deb` stanzas of a deb822 .sources file, in order."""
    uris = []
    for stanza in re.split(r"\n\s*\n", text):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            uris.extend(fields.get("uris", "").split())
    return uris


def _one_line_uris(text):
    uris = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "deb":
            rest = parts[1:]
            if rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
                while rest and not rest[0].endswith("]"):
                    rest = rest[1:]
                rest = rest[1:]
            if rest:
                uris.append(rest[0])
    return uris


def pick_mirror(uris):
    """The main archive among apt URIs: the first one not a security or ports archive."""
    for uri in uris:
        path = uri.rstrip("/")
        if path.endswith("-security") or "/debian-" in path or not uri.startswith(("http://", "https://")):
            continue
        return path
    return None


def host_mirror(etc="/etc/apt"):
    """The host's Debian mirror URI, from sources.list.d/*.sources, then *.list and sources.list."""
    uris = []
    for path in sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.sources"))):
        with open(path) as f:
            uris.extend(_deb822_uris(f.read()))
    lists = sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list")))
    lists.append(os.path.join(etc, "sources.list"))
    for path in lists:
        if os.path.exists(path):
            with open(path) as f:
                uris.extend(_one_line_uris(f.read()))
    mirror = pick_mirror(uris)
    if not mirror:
        raise RuntimeError("no Debian mirror found in %s/sources.list.d/*.sources or sources.list" % etc)
    return mirror


def parse_apt_proxy(dump):
    """Acquire::http::Proxy from `apt-config dump` output, or None ("DIRECT" and "false" mean none)."""
    m = re.search(r'^Acquire::http::Proxy "([^"]*)";', dump, re.M)
    if not m or m.group(1).lower() in ("", "direct", "false"):
        return None
    return m.group(1)


def host_proxy(environ=None):
    """The http proxy this host uses for apt: the environment first, then apt's own configuration."""
    environ = os.environ if environ is None else environ
    for key in ("http_proxy", "HTTP_PROXY"):
        if environ.get(key):
            return environ[key]
    try:
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    return parse_apt_proxy(dump)


def proxy_for_guest(proxy):
    """The same proxy as seen from a qemu user-mode guest: the host's loopback is 10.0.2.2 there."""
    if not proxy:
        return None
    return re.sub(r"//(localhost|127\.0\.0\.1|\[::1\])([:/]|$)", r"//10.0.2.2\2", proxy)
