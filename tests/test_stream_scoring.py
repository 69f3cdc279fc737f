"""The stream benchmarks score the test subset only when what is served changed."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.stream import ScoreOnChange, served_state


class Response:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def json(self) -> dict[str, Any]:
        return self.body


def status(routes: dict[str, Any], deleted: int) -> dict[str, Any]:
    return {"routes": routes, "deleted": deleted}


def run_reads(states: list[dict[str, Any]], corrects: list[int]) -> tuple[list, int]:
    """Read once per poll; each read of the status hands out the next state, each score the
    next number correct (out of 10). Returns the reads and how often it scored."""
    statuses, scores = iter(states), iter(corrects)
    calls = {"score": 0}

    async def get_status() -> Response:
        return Response(next(statuses))

    async def score() -> tuple[int, bool]:
        calls["score"] += 1
        return next(scores), True

    async def main() -> list:
        scorer = ScoreOnChange(get_status, score, 10)
        return [(await scorer.read())[1:] for _ in range(4)]

    return asyncio.run(main()), calls["score"]


A = {"0": {"stage": "0:0.1.2", "depth": 3}}
B = {"0": {"stage": "0:0", "depth": 1}}


def test_the_same_state_is_scored_once_and_a_change_is_scored_again() -> None:
    # poll 1: A (scored: status before and after), poll 2: A again (not scored),
    # poll 3: B (scored), poll 4: B (not scored)
    reads, scored = run_reads([status(A, 0), status(A, 0), status(A, 0),
                               status(B, 1), status(B, 1), status(B, 1)], [7, 4])
    assert scored == 2
    assert reads == [(0.7, True, True), (0.7, True, False), (0.4, True, True), (0.4, True, False)]


def test_a_state_that_moved_while_scored_is_scored_again() -> None:
    # poll 1 reads A, the routes move to B before scoring ends: poll 2 sees B and scores it
    reads, scored = run_reads([status(A, 0), status(B, 1), status(B, 1), status(B, 1),
                               status(B, 1), status(B, 1)], [7, 4, 0])
    assert scored == 2 and reads[1] == (0.4, True, True) and reads[2] == (0.4, True, False)


def test_a_deletion_changes_the_state_even_with_the_same_route_names() -> None:
    # a stage retrained after a deletion serves under the same name: scored anew
    assert served_state(status(A, 0)) != served_state(status(A, 1))
    assert served_state(status(A, 3)) == served_state(status(dict(A), 3))
    assert served_state(status(A, 3)) != served_state(status(B, 3))
