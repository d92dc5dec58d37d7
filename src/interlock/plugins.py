"""``kind: python`` plugins: operator-supplied Python callables named in the config.

A plugin is named ``callable: "package.module:attribute"`` (the attribute may be dotted,
``module:Class.method``). It is imported with :func:`importlib.import_module` and looked
up with ``getattr``; no config text is ever evaluated. If the attribute is a class, it is
constructed once at load with the config's ``kwargs:`` and the instance is the plugin (it
must be callable); otherwise the attribute itself is called on every batch with the
``kwargs`` as keyword arguments.

Trust model: importing a module runs its code with the server's privileges. The module is
named by the operator's config file, so loading it is the operator's choice, like choosing
the ONNX models; whoever can edit the config can already change every decision. Keep
plugin modules under the same change control as the config.

The batch interfaces (numpy arrays in, numpy arrays out) are documented on
:class:`~interlock.monitors.python.PythonMonitor`,
:class:`~interlock.fallbacks.python.PythonFallback` and
:class:`~interlock.reachability.recoverability.PythonDynamics`.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from interlock.errors import ConfigError

_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def load_callable(spec: str, kwargs: Mapping[str, Any] | None, where: str) -> Callable[..., Any]:
    """The plugin ``spec`` names, ready to call.

    Args:
        spec: ``"package.module:attribute"``.
        kwargs: The config's ``kwargs:``: constructor arguments of a class, or keyword
            arguments bound to a function.
        where: Config path for messages (``agents[0].monitors[2]``).

    Raises:
        ConfigError: the spec is malformed, the module does not import, the attribute is
            missing or not callable, or constructing the class fails; the message names
            ``where``.
    """
    if not _SPEC.match(spec or ""):
        raise ConfigError(
            f"{where}.callable must look like 'package.module:attribute' (a module path, a colon, "
            f"an attribute name); got {spec!r}"
        )
    module_name, _, attr_path = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises while importing
        raise ConfigError(
            f"{where}.callable: cannot import module '{module_name}': {type(e).__name__}: {e} "
            "(is it installed, or on PYTHONPATH?)"
        ) from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))[:20]
            raise ConfigError(
                f"{where}.callable: '{module_name}' has no attribute '{attr_path}' "
                f"('{part}' is missing; it has {', '.join(public) or 'nothing public'})"
            )
        obj = getattr(obj, part)
    kw = dict(kwargs or {})
    if inspect.isclass(obj):
        try:
            obj = obj(**kw)
        except Exception as e:
            raise ConfigError(
                f"{where}: constructing {spec} with kwargs {sorted(kw)} failed: {type(e).__name__}: {e}"
            ) from None
        if not callable(obj):
            raise ConfigError(f"{where}.callable: instances of {spec} are not callable (define __call__)")
        return obj
    if not callable(obj):
        raise ConfigError(f"{where}.callable: {spec} is a {type(obj).__name__}, not a function or class")
    return functools.partial(obj, **kw) if kw else obj


def probe_error(where: str, what: str, e: Exception) -> ConfigError:
    """The ConfigError of a plugin whose probe call at load raised ``e``."""
    return ConfigError(f"{where}: the probe call of {what} at load failed: {type(e).__name__}: {e}")
