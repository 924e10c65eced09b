"""Papermill parameters, checked: every notebook refuses a misspelled `-p` name before heavy work.

papermill injects `-p` values as a cell after the one tagged `parameters` and only *warns* about
names it does not know (and it also warns for valid names whose comment holds "="), so a typo such as
`-p betaz 0.1` would otherwise run the whole notebook with the default. Each parameters cell ends with
`_defined = set(globals())`; the next cell calls `check_parameter_names(globals(), _defined, [...])`.
"""

from __future__ import annotations

from collections.abc import Iterable


def injected_names(namespace: dict, defined: set[str]) -> set[str]:
    """Names that appeared after the parameters cell (papermill's injected ones), private names excluded."""
    return {n for n in set(namespace) - set(defined) if not n.startswith("_")}


def check_parameter_names(namespace: dict, defined: set[str], valid: Iterable[str],
                          extra_valid: Iterable[str] = ()) -> set[str]:
    """Raise ValueError naming each injected name that is not a parameter, and the valid ones.

    `valid`: the notebook's parameters; `extra_valid`: further accepted names (e.g. config fields
    that 04_train passes on). Returns the injected names, all valid.
    """
    valid = sorted(set(valid))
    extra = sorted(set(extra_valid) - set(valid))
    injected = injected_names(namespace, defined)
    unknown = sorted(injected - set(valid) - set(extra))
    if unknown:
        message = f"unknown parameter(s) {unknown}; valid parameters: {', '.join(valid)}"
        if extra:
            message += f"; also accepted: {', '.join(extra)}"
        raise ValueError(message)
    return injected
