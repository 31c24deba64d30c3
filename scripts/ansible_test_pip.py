"""Stand-in for get-pip.py that ansible-test runs in each new venv: install pip with ensurepip, then pip from PyPI.

ansible-test downloads get-pip.py from ci-files.testing.ansible.com, which this project's machines cannot reach;
scripts/sanity.sh copies this file to ~/.ansible/test/cache/get_pip_<version>.py instead. ansible-test runs it
as `python get_pip_X.py [pip options] pip==X --no-setuptools --no-wheel`: the two get-pip.py flags are dropped
(ensurepip's pip needs neither), everything else goes to `pip install`.
"""
import os
import subprocess
import sys

CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
GET_PIP_ONLY = ("--no-setuptools", "--no-wheel")


def pip_install_args(argv):
    """The `pip install` arguments for the get-pip.py arguments argv."""
    args = [arg for arg in argv if arg not in GET_PIP_ONLY]
    if os.path.isfile(CA_BUNDLE):
        args = ["--cert", CA_BUNDLE] + args
    return args


def main():
    """Bootstrap pip with ensurepip, then install what ansible-test asked for (its pinned pip)."""
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
    install = [sys.executable, "-m", "pip", "install", "--quiet"] + pip_install_args(sys.argv[1:])
    subprocess.check_call(install)


if __name__ == "__main__":
    main()
