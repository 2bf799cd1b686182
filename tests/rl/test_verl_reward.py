"""verl's custom reward function, loaded and called as verl 0.9.1 does: imported from its file path
(`verl.utils.import_utils.load_module`), `reward_kwargs` merged in (`verl.trainer.ppo.reward._call_with_kwargs`),
and called with keywords from a thread pool (`loop.run_in_executor` in the reward loop's naive manager), over the
RL export of real GSM8K rows. verl itself cannot be installed beside this project (it pins transformers < 5.11 and
needs ray), so these are its call sites, written out."""

from __future__ import annotations

import importlib.util
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import pytest

from tunelake.rl import verl_reward


def _load_like_verl(name: str):
    """verl's load_module for a file path, then getattr(module, name)."""
    spec = importlib.util.spec_from_file_location("custom_module_0", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_module_0"] = module
    spec.loader.exec_module(module)
    return getattr(module, name)


def _call_with_kwargs(raw_fn, extra_kwargs, *args, **kwargs):
    return raw_fn(*args, **{**kwargs, **extra_kwargs})


def _verl_scores(compute_score, rows: list[dict], responses: list[str]) -> list:
    """Each response scored as verl's reward loop scores it: keywords only, on executor threads."""

    def score(row: dict, response: str):
        return compute_score(
            data_source=row["data_source"],
            solution_str=response,
            ground_truth=row["reward_model"]["ground_truth"],
            extra_info=row["extra_info"],
        )

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(score, rows, responses))


def test_verl_scores_the_rl_export_through_the_verifiers_and_the_cache(tmp_path, gsm8k_rl_export):
    bank = gsm8k_rl_export
    loaded = _load_like_verl("compute_score")
    compute_score = partial(_call_with_kwargs, loaded, {"lake": str(tmp_path / "lake")})
    answers = [row["extra_info"]["answer"] for row in bank]
    right = _verl_scores(compute_score, bank, [f"So the answer is #### {a}" for a in answers])
    assert right == [{"score": 1.0, "acc": 1.0}] * len(bank)
    wrong = _verl_scores(compute_score, bank, [f"The answer is {int(a) + 1}." for a in answers])
    assert wrong == [{"score": 0.0, "acc": 0.0}] * len(bank)
    (rewards,) = loaded.__globals__["_REWARDS"].values()  # the one Rewards verl's threads shared
    hits = rewards.cache.figures()["hits"]
    assert _verl_scores(compute_score, bank, [f"#### {a}" for a in answers]) == right
    assert rewards.cache.figures()["stored"] == 3 * len(bank) and rewards.cache.figures()["hits"] == hits


def test_a_response_no_worker_can_score_stops_verl_rather_than_scoring_0(tmp_path, gsm8k_rl_export):
    bank = gsm8k_rl_export
    kwargs = {"lake": str(tmp_path / "lake"), "plugins": ["tests.rl.worker_plugins"], "workers": 1}
    compute_score = partial(_call_with_kwargs, _load_like_verl("compute_score"), kwargs)
    info = {**bank[0]["extra_info"], "verifier": "test_exits_worker", "verifier_config": None}
    with pytest.raises(RuntimeError, match="could not score the response: the verifier worker died"):
        compute_score(data_source="gsm8k", solution_str="#### 1", ground_truth="1", extra_info=info)


def test_a_dimension_normalised_over_the_group_is_refused_as_verl_scores_one_response_at_a_time(
    tmp_path, gsm8k_rl_export
):
    bank = gsm8k_rl_export
    loaded = _load_like_verl("compute_score")
    compute_score = partial(_call_with_kwargs, loaded, {"lake": str(tmp_path / "lake")})
    config = json.dumps({"parts": [{"verifier": "numeric"}, {"name": "exact", "verifier": "exact_match"}]})
    info = {**bank[0]["extra_info"], "verifier": "composite", "verifier_config": config}
    loaded.__globals__["_rewards"](str(tmp_path / "lake"), 2, 10.0, ()).normalize = {"exact": "group"}
    with pytest.raises(ValueError, match="exact normalised over the group"):
        compute_score(data_source="gsm8k", solution_str="#### 1", ground_truth="1", extra_info=info)
