"""Fetch the .debs a guest's `apt-get --print-uris` listed into a directory on the controller (molecule prepare).

One job, with the guest's output as data, never as shell: a line that starts with a quote must read
`'URL' FILE SIZE SHA256:HEX` (or SHA512), with an http(s) URL of plain characters and a bare .deb file name;
anything else is refused before anything is fetched. Each file is fetched to a temporary name, checked against
its size and digest, then renamed into place; one already there with the right digest is kept.
Usage: fetch_debs.py DIR < the guest's output. Prints the number of .debs in DIR.
"""
import hashlib
import os
import re
import sys
import tempfile
import urllib.request

LINE = re.compile(r"^'(https?://[A-Za-z0-9][A-Za-z0-9._~:/%+-]*)' ([A-Za-z0-9][A-Za-z0-9._~%+-]*\.deb) ([0-9]+) "
                  r"(SHA256:[0-9a-f]{64}|SHA512:[0-9a-f]{128})$")


class BadLine(ValueError):
    pass


def parse(text):
    """[(url, file name, size, (algorithm, hex digest))] of every quoted line; BadLine for one that does not fit."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r")
        if not line.startswith("'"):
            continue
        m = LINE.match(line)
        if not m or ".." in m.group(1):
            raise BadLine("line %d of the guest's apt-get --print-uris is not 'URL' FILE SIZE SHA256:HEX: %r"
                          % (number, line[:200]))
        algorithm, digest = m.group(4).split(":")
        out.append((m.group(1), m.group(2), int(m.group(3)), (algorithm.lower(), digest)))
    return out


def _digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(directory, url, name, size, digest, opener=urllib.request.urlopen):
    """DIR/name from url, unless it is there already with that digest. ValueError when what came is not it."""
    path = os.path.join(directory, name)
    if os.path.isfile(path) and not os.path.islink(path) and _digest(path, digest[0]) == digest[1]:
        return False
    fd, tmp = tempfile.mkstemp(prefix=".fetch-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, opener(url, timeout=60) as src:
            for chunk in iter(lambda: src.read(1 << 16), b""):
                out.write(chunk)
        if os.path.getsize(tmp) != size or _digest(tmp, digest[0]) != digest[1]:
            raise ValueError("%s: not the file apt named (size or %s differs)" % (url, digest[0]))
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def main(argv, stdin):
    if len(argv) != 2:
        sys.stderr.write("usage: fetch_debs.py DIR < apt-get --print-uris output\n")
        return 2
    directory = argv[1]
    try:
        wanted = parse(stdin.read())
    except BadLine as e:
        sys.stderr.write("refused, nothing fetched: %s\n" % e)
        return 1
    os.makedirs(directory, exist_ok=True)
    for url, name, size, digest in wanted:
        fetch(directory, url, name, size, digest)
    print(len([n for n in os.listdir(directory) if n.endswith(".deb")]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv, sys.stdin))
