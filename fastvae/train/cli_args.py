"""Model hyper-parameters from the command line: ``--some-name VALUE`` -> ``some_name``.

Every flag ``fastvae train`` does not define itself names a hyper-parameter of the chosen model (see
:func:`fastvae.models.hyperparameters`). Values are converted to the type of the default:

========================  ===========================================================
default                   accepted values
========================  ===========================================================
bool                      ``true``/``false``, ``1``/``0``, ``yes``/``no``, ``on``/``off``;
                          a bare ``--flag`` means true
int, float, str           the literal (ints also accept ``1e3``-style integral floats)
tuple or list             comma-separated items, each converted like the first item of
                          the default (``--hidden 64,128``)
None                      ``none``, else an int, a float, or the string as given
========================  ===========================================================

An unknown flag is reported with the closest trainer flags and hyper-parameters (``--step``: did
you mean ``--steps``?).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from fastvae import models

__all__ = ["HyperParameterError", "as_flag", "convert", "parse_hparams", "restore_types"]

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class HyperParameterError(ValueError):
    """A hyper-parameter flag that is unknown, malformed or of the wrong type (one-line message)."""


def as_flag(name: str) -> str:
    """The command-line spelling of an argument or hyper-parameter: ``batch_size`` -> ``--batch-size``."""
    return "--" + name.replace("_", "-")


def _scalar(text: str, like: Any, flag: str) -> Any:
    """``text`` converted to the type of ``like`` (any scalar type, None for "guess")."""
    lowered = text.strip().lower()
    if isinstance(like, bool):
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise HyperParameterError(f"{flag} takes true or false, got {text!r}")
    if isinstance(like, int):
        try:
            return int(text)
        except ValueError:
            pass
        try:
            value = float(text)
        except ValueError:
            raise HyperParameterError(f"{flag} takes an int, got {text!r}") from None
        if not value.is_integer():
            raise HyperParameterError(f"{flag} takes an int, got {text!r}")
        return int(value)
    if isinstance(like, float):
        try:
            return float(text)
        except ValueError:
            raise HyperParameterError(f"{flag} takes a number, got {text!r}") from None
    if isinstance(like, str):
        return text
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def convert(text: str, default: Any, name: str) -> Any:
    """Convert the command-line ``text`` for hyper-parameter ``name`` to the type of its ``default``
    (table in the module docstring).

    Raises:
        HyperParameterError: ``text`` does not parse as that type; the message names the flag.
    """
    flag = as_flag(name)
    if isinstance(default, (tuple, list)):
        items = [item.strip() for item in text.split(",") if item.strip()]
        like = default[0] if default else None
        return type(default)(_scalar(item, like, flag) for item in items)
    return _scalar(text, default, flag)


def parse_hparams(model: str, tokens: Sequence[str], *, command_flags: Sequence[str] = ()) -> dict[str, Any]:
    """Hyper-parameters of ``model`` from the flags left over by the trainer's own parser.

    Args:
        model: a registered model name.
        tokens: e.g. ``["--beta", "4", "--likelihood=gaussian", "--ema"]``.
        command_flags: the command's own flags (``--steps``...): with the hyper-parameters, the
            candidates offered for an unknown flag.

    Returns:
        ``{"beta": 4.0, "likelihood": "gaussian", "ema": True}``, converted by :func:`convert`.

    Raises:
        ValueError: unknown ``model`` (the message lists the valid names).
        HyperParameterError: a token that is not a flag, an unknown flag (the message names the
            closest flags and lists the model's hyper-parameters), a flag without a value, or a
            value of the wrong type.
    """
    defaults = models.hyperparameters(model)
    valid = ", ".join(map(as_flag, defaults)) or "(none)"
    candidates = [*command_flags, *map(as_flag, defaults)]
    parsed: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise HyperParameterError(f"unexpected argument {token!r}; hyper-parameters are --name VALUE flags")
        flag, has_value, value = token.partition("=")
        name = flag[2:].replace("-", "_")
        if name not in defaults:
            # Compared without the leading "--", which every candidate shares.
            close = difflib.get_close_matches(as_flag(name)[2:], [c[2:] for c in candidates], n=3)
            hint = f"did you mean {' or '.join('--' + c for c in close)}? " if close else ""
            raise HyperParameterError(
                f"unknown flag {flag} for model {model!r}; {hint}its hyper-parameters: {valid} "
                "(the trainer's flags: fastvae train --help)"
            )
        if name in parsed:
            raise HyperParameterError(f"{flag} is given twice")
        i += 1
        if not has_value:
            takes_next = i < len(tokens) and not (tokens[i].startswith("--") and len(tokens[i]) > 2)
            if takes_next:
                value = tokens[i]
                i += 1
            elif isinstance(defaults[name], bool):
                value = "true"
            else:
                raise HyperParameterError(f"{flag} needs a value")
        parsed[name] = convert(value, defaults[name], name)
    return parsed


def restore_types(model: str, hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters read back from JSON with the container types of the defaults: JSON turns
    tuples into lists, which this turns back where the default is a tuple."""
    defaults = models.hyperparameters(model)
    return {
        name: tuple(value) if isinstance(defaults.get(name), tuple) and isinstance(value, list) else value
        for name, value in hparams.items()
    }
