"""The curriculum: p(1 - p) weighting over a long run, seeded and resumable batches, EMA pass rates; the window."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.rl.completions import group
from tunelake.rl.curriculum import Curriculum, CurriculumConfig, EmptyWindow, PassRateWindow, pass_rate

RATES = {"solved": 1.0, "hopeless": 0.0, "even": 0.5, "hard": 0.1}


def test_intermediate_prompts_are_sampled_most_over_a_long_run():
    curriculum = Curriculum([*RATES, "unseen"], CurriculumConfig(seed=1), RATES)
    counts = Counter(p for _ in range(4000) for p in curriculum.sample(1))
    # weights: even 0.25, unseen 0.25 (prior 0.5), hard 0.09, solved and hopeless the floor 0.01 (of 0.61 in all)
    assert counts["even"] > 2 * counts["hard"] > 4 * max(counts["solved"], counts["hopeless"])
    assert counts["unseen"] > 2 * counts["hard"]
    assert 0 < counts["solved"] < 150 and 0 < counts["hopeless"] < 150  # the floor: rare, never starved (~66 each)


def test_a_batch_holds_distinct_prompts():
    curriculum = Curriculum([*RATES], CurriculumConfig(), RATES)
    assert sorted(curriculum.sample(4)) == sorted(RATES)
    with pytest.raises(ValueError, match="expected 1 to 4"):
        curriculum.sample(5)


def test_the_same_seed_gives_the_same_batches():
    ids = [f"p{i}" for i in range(50)]

    def run(seed: int) -> list[list[str]]:
        curriculum = Curriculum(ids, CurriculumConfig(seed=seed))
        return [curriculum.sample(8) for _ in range(20)]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_a_restored_curriculum_continues_exactly_where_it_stopped():
    ids = [f"p{i}" for i in range(30)]
    curriculum = Curriculum(ids, CurriculumConfig(seed=7))
    for step in range(5):
        for i, prompt_id in enumerate(curriculum.sample(4)):
            curriculum.update(prompt_id, ((step + i) % 5) / 4)
    saved = json.loads(json.dumps(curriculum.state()))  # through JSON, as a run would keep it on disk

    def go_on(c: Curriculum) -> list[list[str]]:
        batches = []
        for step in range(10):
            batch = c.sample(4)
            for i, prompt_id in enumerate(batch):
                c.update(prompt_id, ((step * 3 + i) % 5) / 4)
            batches.append(batch)
        return batches

    restored = Curriculum.restore(saved)
    assert restored.step == 5
    assert go_on(restored) == go_on(curriculum)
    assert restored.state() == curriculum.state()


def test_pass_rates_move_as_an_exponential_moving_average():
    curriculum = Curriculum(["p0", "p1"], CurriculumConfig(ema=0.3))
    assert curriculum.pass_rate("p0") is None
    curriculum.update("p0", 0.5)  # the first measurement replaces the prior
    assert curriculum.pass_rate("p0") == 0.5
    curriculum.update("p0", 1.0)
    assert curriculum.pass_rate("p0") == pytest.approx(0.65)  # 0.7 * 0.5 + 0.3 * 1.0
    curriculum.observe(group([1.0, 0.0, 0.0, 0.0], prompt_id="p0"))  # pass rate 0.25
    assert curriculum.pass_rate("p0") == pytest.approx(0.53)  # 0.7 * 0.65 + 0.3 * 0.25
    curriculum.observe(group([None, None], prompt_id="p0"))  # nothing scored: no change
    assert curriculum.pass_rate("p0") == pytest.approx(0.53)
    with pytest.raises(KeyError, match="'p9' is not in this curriculum"):
        curriculum.update("p9", 0.5)


def test_a_group_pass_rate_counts_only_scored_rollouts():
    assert pass_rate(group([1.0, None, 0.0, 1.0])) == pytest.approx(2 / 3)
    assert pass_rate(group([None])) is None


def test_the_window_keeps_prompts_strictly_inside_it():
    assert PassRateWindow().keep(RATES) == ["even", "hard"]
    assert PassRateWindow(low=0.2, high=0.9).keep(RATES) == ["even"]


def test_an_empty_window_stops_with_the_counts():
    with pytest.raises(EmptyWindow, match=r"of 3 measured, 1 at or below 0 \(too hard\) and 2 at or above 1"):
        PassRateWindow().keep({"a": 1.0, "b": 0.0, "c": 1.0})
