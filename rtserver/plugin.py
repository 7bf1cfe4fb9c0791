"""The domain plugin interface: how a domain adds messages, handlers and state to a node.

A domain is a class derived from :class:`DomainPlugin`. The node creates one
instance per node (so the instance *is* the domain's per-node state: no module
globals), calls :meth:`DomainPlugin.install` with the node's
:class:`~rtserver.router.Router` and its :class:`~rtserver.context.HandlerContext`
before the codec is built, then :meth:`DomainPlugin.start` once the node and
its store are up, and :meth:`DomainPlugin.stop` before the node closes.

Domains are enabled by configuration (``[domains] enabled``): a name of
:data:`BUILTIN_DOMAINS` or ``"package.module:ClassName"``. The core never
imports a domain package; it loads the configured classes here, by name.
docs/architecture.md shows a complete 30-line example domain.
"""

from __future__ import annotations

import abc
import importlib
from collections.abc import Sequence
from typing import ClassVar

from rtserver.config import Config
from rtserver.context import HandlerContext
from rtserver.router import Router

__all__ = ["BUILTIN_DOMAINS", "DomainLoadError", "DomainPlugin", "load_domain_classes"]

#: Domains shipped with rtserver, by configuration name.
BUILTIN_DOMAINS: dict[str, str] = {
    "insurance": "rtserver.domains.insurance:InsuranceDomain",
}


class DomainLoadError(ValueError):
    """A configured domain cannot be loaded (the message names the required action)."""


class DomainPlugin(abc.ABC):
    """One domain on one node."""

    #: The domain's name (its key in ``[domains] enabled`` for built-in domains).
    name: ClassVar[str]

    def __init__(self, config: Config) -> None:
        self.config = config

    @abc.abstractmethod
    def install(self, router: Router, ctx: HandlerContext) -> None:
        """Register message handlers, hooks, ingress kinds and HTTP routes; keep ``ctx``."""

    async def start(self) -> None:  # noqa: B027 - optional lifecycle step
        """Start background work (called after the node and its store started)."""

    async def stop(self) -> None:  # noqa: B027 - optional lifecycle step
        """End every stream and task (called before the node closes)."""


def load_domain_classes(names: Sequence[str]) -> list[type[DomainPlugin]]:
    """The plugin classes of ``names`` (built-in names or ``module:Class``), in order."""
    classes: list[type[DomainPlugin]] = []
    for name in names:
        target = BUILTIN_DOMAINS.get(name, name)
        module_name, sep, class_name = target.partition(":")
        if not sep or not module_name or not class_name:
            raise DomainLoadError(
                f"domain {name!r} is neither a built-in domain ({', '.join(BUILTIN_DOMAINS)}) "
                "nor 'package.module:ClassName'. Required action: fix [domains] enabled")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DomainLoadError(
                f"domain {name!r}: module {module_name!r} cannot be imported ({exc}). "
                "Required action: install the domain's package or fix [domains] enabled"
            ) from exc
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type) or not issubclass(cls, DomainPlugin):
            raise DomainLoadError(
                f"domain {name!r}: {target} is not a DomainPlugin subclass. Required action: "
                "point [domains] enabled at a class derived from rtserver.plugin.DomainPlugin")
        if cls in classes:
            raise DomainLoadError(f"domain {name!r} is enabled twice. Required action: list "
                                  "each domain once in [domains] enabled")
        classes.append(cls)
    return classes
