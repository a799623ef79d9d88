"""Read-only collectors: each returns plain frozen dataclasses and never judges them."""

__all__: list[str] = []
