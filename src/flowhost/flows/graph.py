"""Pure DAG helpers: dependencies and topological order."""

from __future__ import annotations

from collections.abc import Mapping, Set

__all__ = ["find_cycle", "topological_order"]


def topological_order(deps: Mapping[str, Set[str]]) -> list[str]:
    """Kahn's algorithm, stable in the declaration order of ``deps``. Raises ValueError on a cycle."""
    remaining = {n: set(d) for n, d in deps.items()}
    order: list[str] = []
    while remaining:
        ready = [n for n, d in remaining.items() if not d]
        if not ready:
            cycle = find_cycle(remaining)
            raise ValueError(" -> ".join(cycle))
        for n in ready:
            order.append(n)
            del remaining[n]
        for d in remaining.values():
            d.difference_update(ready)
    return order


def find_cycle(deps: Mapping[str, Set[str]]) -> list[str]:
    """One cycle in ``deps`` as a list of names, first name repeated at the end ([] if none)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(deps.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in deps:
        if n not in state and (found := visit(n)):
            return found
    return []
