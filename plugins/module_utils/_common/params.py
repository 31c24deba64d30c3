# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Module parameters outside Ansible: fill in an argument spec's defaults the way AnsibleModule does.

One job: the boot-time re-apply (reapply.py) calls the modules' own apply functions with the parameters the
role saved; those may leave out options that have defaults. Importable without ansible.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


def with_defaults(params, spec):
    """A copy of `params` with every option of `spec` present: given value, else its default, else None.
    Dict options with suboptions get their suboptions' defaults too (a dict option left out stays None)."""
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError("unsupported parameters: %s" % ", ".join(unknown))
    out = {}
    for key, opt in spec.items():
        value = params.get(key)
        if value is None:
            value = opt.get("default")
        if isinstance(value, dict) and opt.get("options"):
            value = with_defaults(value, opt["options"])
        out[key] = value
    return out
