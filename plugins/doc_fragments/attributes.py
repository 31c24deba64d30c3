# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared `attributes:` documentation for the collection's modules."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):

    # A module that changes kernel state.
    DOCUMENTATION = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Can run in check_mode and return changed status prediction without modifying the kernel.
  diff_mode:
    support: full
    description: Returns details on what has changed (or would change in check mode).
  idempotent:
    support: full
    description: A second run with the same arguments reports C(changed=false) and touches nothing.
"""

    # A module that only reads (facts and info modules).
    INFO_MODULE = r"""
options: {}
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: N/A
    description: Changes nothing, so there is no diff.
  idempotent:
    support: full
    description: Reads only.
"""

    FACTS = r"""
options: {}
attributes:
  facts:
    support: full
    description: Returns its results under C(ansible_facts).
"""
