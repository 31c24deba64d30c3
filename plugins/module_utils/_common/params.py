# -*- coding: utf-8 -*-
# Copyright: hypermesh engineers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Module parameters outside Ansible: check and complete them with the argument spec AnsibleModule gets.

One job: the boot-time re-apply (reapply.py) runs without Ansible and calls the modules' own apply functions
with the parameters ebpf_state saved. validate() refuses what AnsibleModule refuses for the same spec constants
(types, choices, required, required_if, mutually_exclusive, nested options and list elements), with the same
wording, so no constraint is restated by hand; with_defaults() only fills in defaults. Importable without ansible.
tests/unit/plugins/module_utils/_common/test_params.py feeds both this and ansible's own validator the same input.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import decimal
import json
import os

# the spec keys validate() implements; a spec using another one (aliases, fallback, ...) fails loudly
_SPEC_KEYS = frozenset(("type", "required", "default", "choices", "elements", "options", "no_log",
                        "mutually_exclusive", "required_if", "required_together", "required_one_of"))
_TRUE = frozenset(("y", "yes", "on", "1", "true", "t", 1, 1.0, True))
_FALSE = frozenset(("n", "no", "off", "0", "false", "f", 0, 0.0, False))


class ParamError(ValueError):
    """Parameters refused as AnsibleModule refuses them (the message is ansible's)."""


def _to_str(v):
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return str(v)


def _to_bool(v):
    if isinstance(v, bool):
        return v
    if isinstance(v, (str, int, float)):
        n = v.lower().strip() if isinstance(v, str) else v
        if n in _TRUE:
            return True
        if n in _FALSE:
            return False
    raise TypeError("The value %r is not a valid boolean" % (v,))


def _to_int(v):
    if isinstance(v, int):
        return v
    try:
        d = decimal.Decimal(v)
        if d != int(d):
            raise ValueError("Significant decimal part found")
        return int(d)
    except (decimal.DecimalException, TypeError, ValueError):
        raise TypeError('"%r" cannot be converted to an int' % (v,))


def _to_float(v):
    if isinstance(v, float):
        return v
    if isinstance(v, (bytes, str, int)):
        try:
            return float(v)
        except ValueError:
            pass
    raise TypeError("%s cannot be converted to a float" % type(v))


def _to_list(v):
    if isinstance(v, list):
        return v
    if isinstance(v, str):
        return v.split(",")
    if isinstance(v, (int, float)):
        return [str(v)]
    raise TypeError("%s cannot be converted to a list" % type(v))


def _to_dict(v):
    """A dict, or a JSON object in a string (ansible's key=value strings are refused: nothing saves those)."""
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v.startswith("{"):
        try:
            out = json.loads(v)
            if isinstance(out, dict):
                return out
        except ValueError:
            pass
    raise TypeError("dictionary requested, could not parse JSON or key=value")


_CONVERT = {"str": _to_str, "path": lambda v: os.path.expanduser(os.path.expandvars(_to_str(v))),
            "bool": _to_bool, "int": _to_int, "float": _to_float, "list": _to_list, "dict": _to_dict,
            "raw": lambda v: v}


def _found(where):
    return " found in %s" % " -> ".join(where) if where else ""


def _present(terms, params):
    return [t for t in terms if t in params]


def _validate(params, spec, where, rules):
    for key, opt in spec.items():
        odd = sorted(set(opt) - _SPEC_KEYS)
        if odd or opt.get("type", "str") not in _CONVERT or opt.get("elements", "str") not in _CONVERT:
            raise NotImplementedError("option %s: spec keys %s are not implemented by params.validate"
                                      % (key, odd or [opt.get("type"), opt.get("elements")]))
    unknown = sorted(set(params) - set(spec))
    if unknown:
        names = ", ".join(".".join(where + [k]) for k in unknown)
        raise ParamError("Unsupported parameters: %s. Supported parameters include: %s."
                         % (names, ", ".join(sorted(spec))))
    for terms in rules.get("mutually_exclusive") or []:
        if len(_present(terms, params)) > 1:
            raise ParamError("parameters are mutually exclusive: %s%s" % ("|".join(terms), _found(where)))
    out = dict(params)
    for key, opt in spec.items():  # the defaults that are not None come first, as in ansible
        if key not in out and opt.get("default") is not None:
            out[key] = opt["default"]
    missing = sorted(k for k, opt in spec.items() if opt.get("required") and k not in out)
    if missing:
        raise ParamError("missing required arguments: %s%s" % (", ".join(missing), _found(where)))
    for key, opt in spec.items():
        if out.get(key) is None:
            continue
        kind = opt.get("type", "str")
        try:
            out[key] = _CONVERT[kind](out[key])
        except TypeError as e:
            at = " found in '%s'." % " -> ".join(where) if where else ""
            raise ParamError("argument '%s' is of type %s%s and we were unable to convert to %s: %s"
                             % (key, type(out[key]).__name__, at, kind, e))
        if kind == "list" and opt.get("elements"):
            el = opt["elements"]
            try:
                out[key] = [_CONVERT[el](v) for v in out[key]]
            except TypeError as e:
                at = " found in '%s'" % " -> ".join(where) if where else ""
                bad = [v for v in out[key] if not _ok(el, v)][0]
                raise ParamError("Elements value for option '%s'%s is of type %s and we were unable to convert to "
                                 "%s: %s" % (key, at, type(bad).__name__, el, e))
    for key, opt in spec.items():  # values after every type, as in ansible
        if out.get(key) is None:
            continue
        kind = opt.get("type", "str")
        if opt.get("choices") is not None and kind != "list" and out[key] not in opt["choices"]:
            raise ParamError("value of %s must be one of: %s, got: %s%s"
                             % (key, ", ".join(str(c) for c in opt["choices"]), out[key], _found(where)))
    for terms in rules.get("required_together") or []:
        if 0 < len(_present(terms, out)) < len(terms):
            raise ParamError("parameters are required together: %s%s" % (", ".join(terms), _found(where)))
    for terms in rules.get("required_one_of") or []:
        if not _present(terms, out):
            raise ParamError("one of the following is required: %s%s" % (", ".join(terms), _found(where)))
    for rule in rules.get("required_if") or []:
        key, value, needed = rule[0], rule[1], rule[2]
        any_of = len(rule) > 3 and rule[3]
        if key in out and out[key] == value:
            lacking = [n for n in needed if n not in out]
            if lacking and (not any_of or len(lacking) == len(needed)):
                raise ParamError("%s is %s but %s of the following are missing: %s%s"
                                 % (key, value, "any" if any_of else "all", ", ".join(lacking), _found(where)))
    for key, opt in spec.items():
        out.setdefault(key, None)
        sub = opt.get("options")
        if sub is None or out[key] is None:
            continue
        sub_rules = dict((r, opt.get(r)) for r in ("mutually_exclusive", "required_if", "required_together",
                                                   "required_one_of"))
        if opt.get("type") == "dict":
            out[key] = _validate(out[key], sub, where + [key], sub_rules)
        elif opt.get("type") == "list" and opt.get("elements") == "dict":
            out[key] = [_validate(v, sub, where + [key], sub_rules) for v in out[key]]
    return out


def _ok(kind, v):
    try:
        _CONVERT[kind](v)
        return True
    except TypeError:
        return False


def validate(params, spec, mutually_exclusive=None, required_if=None, required_together=None,
             required_one_of=None):
    """`params` checked and converted against `spec` and the module-level constraints AnsibleModule takes, every
    option present (its default, else None). Raises ParamError with ansible's message for the first refusal.
    A key given as None counts as given (ansible counts keys, not values): strip the Nones of saved output."""
    rules = dict(mutually_exclusive=mutually_exclusive, required_if=required_if,
                 required_together=required_together, required_one_of=required_one_of)
    return _validate(dict(params), spec, [], rules)


def without_none(value):
    """`value` with every None-valued dict key dropped, recursively: AnsibleModule's output, which fills every
    option left out with None, back as the input it came from (validate() refuses its own output otherwise,
    as ansible does: a None sibling counts in a mutually_exclusive group)."""
    if isinstance(value, dict):
        return dict((k, without_none(v)) for k, v in value.items() if v is not None)
    if isinstance(value, list):
        return [without_none(v) for v in value]
    return value


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
