"""The public API is re-exported from `poolwarden` with a complete, sorted __all__."""

from __future__ import annotations

import importlib
import pkgutil

import poolwarden

# Adapters for optional libraries are imported only by apps that use them; their names
# live in their own module and are not re-exported.
OPTIONAL = {
    "poolwarden.guard.sqlalchemy",
    "poolwarden.guard.asyncpg",
    "poolwarden.guard.asgi",
    "poolwarden.web.app",
}
# The monitor's and the planner's names (Alert, Rule, Incident, Topology...) live in their
# subpackages, not at the top: they would crowd the library API an app imports for its pool.
NAMESPACES = (
    "poolwarden.watch",
    "poolwarden.web",
    "poolwarden.plan",
    "poolwarden.review",
    "poolwarden.drill",
)


def _public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(poolwarden.__path__, "poolwarden."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or parts[-1] == "cli" or info.name in OPTIONAL:
            continue
        if info.name.startswith(NAMESPACES):
            continue
        names.append(info.name)
    return names


def test_all_is_sorted_and_unique() -> None:
    """__all__ is sorted so additions are easy to review, and holds no duplicate."""
    assert list(poolwarden.__all__) == sorted(set(poolwarden.__all__))


def test_all_names_resolve() -> None:
    """Every name in __all__ exists on the package."""
    for name in poolwarden.__all__:
        assert hasattr(poolwarden, name), name


def test_every_public_name_of_every_public_module_is_exported() -> None:
    """Each public module's __all__ is re-exported from the package, so users import one place."""
    missing = []
    for module_name in _public_modules():
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            if name not in poolwarden.__all__:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"add to poolwarden.__all__: {missing}"


def test_every_public_module_declares_all() -> None:
    """A public module without __all__ would slip past the completeness check."""
    assert [
        m for m in _public_modules() if not hasattr(importlib.import_module(m), "__all__")
    ] == []


def test_every_subpackage_reexports_its_modules_names() -> None:
    """`poolwarden.guard` and friends re-export their modules' names (private modules too), sorted."""
    for info in pkgutil.walk_packages(poolwarden.__path__, "poolwarden."):
        if not info.ispkg:
            continue
        package = importlib.import_module(info.name)
        assert list(package.__all__) == sorted(package.__all__), info.name
        for sub in pkgutil.iter_modules(package.__path__, info.name + "."):
            if sub.name in OPTIONAL:
                continue
            module = importlib.import_module(sub.name)
            missing = set(getattr(module, "__all__", ())) - set(package.__all__)
            assert not missing, f"add to {info.name}.__all__: {sorted(missing)}"
