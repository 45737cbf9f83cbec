"""`closing_factory`: the shape of the make_store/make_registry fixtures, shared by tests/services
and tests/robot_agent (which puts this directory on sys.path)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, TypeVar

H = TypeVar("H")


@contextlib.contextmanager
def closing_factory(make: Callable[..., H]) -> Iterator[Callable[..., H]]:
    """Yields a factory that calls ``make`` and remembers each harness; on exit closes them all,
    ignoring errors (a test may already have closed or broken one).

    Usage in a fixture::

        with closing_factory(lambda **kw: Harness(...)) as factory:
            yield factory
    """
    harnesses: list[H] = []

    def factory(*args, **kwargs) -> H:
        h = make(*args, **kwargs)
        harnesses.append(h)
        return h

    yield factory
    for h in harnesses:
        with contextlib.suppress(Exception):
            h.close()
