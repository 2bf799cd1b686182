"""`tunelake rl calibrate | run | reverify | assemble | serve` against a real chat-completions server (a tiny random
model, tests/rl/chat_server.py) on a bank of real GSM8K questions. The model cannot do arithmetic, so the bank's
verifier rewards what it can do: a short answer (`regex`, at most 20 characters), which some of its samples give."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from tests.conftest import FIXTURES, run_build, write_recipe
from tunelake.cli import app
from tunelake.lake import Lake
from tunelake.rl.dataplane import DataPlane, LoopConfig
from tunelake.rl.endpoint import Endpoint, RequestCache
from tunelake.rl.rollouts import read_rollouts
from tunelake.rl.serve import Service, serve
from tunelake.rl.trainers import Rewards

SHORT = json.dumps({"pattern": r"[\s\S]{0,20}", "extract": False})
LOOP = {"k": 4, "prompts_per_step": 3, "sampling": {"max_tokens": 8, "seed": 5}, "groups": {"over_length": "keep"}}


@pytest.fixture
def lake(tmp_path) -> Lake:
    rows = [json.loads(line) for line in (FIXTURES / "real" / "gsm8k_test_sample.jsonl").read_text().splitlines()]
    bank = tmp_path / "bank.jsonl"
    bank.write_text(
        "".join(
            json.dumps({"prompt": r["question"], "answer": "short", "verifier": "regex", "verifier_config": SHORT})
            + "\n"
            for r in rows
        )
    )
    source = {"name": "bank", "path": str(bank), "format": "rl", "license": "mit", "origin": "human"}
    gold = {"split": {"validation": 0.0, "test": 0.0}, "export": []}
    return run_build(write_recipe(tmp_path, [source], gold=gold))[1]


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, ["rl", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_run_reverify_assemble_and_calibrate_through_the_cli(lake, tmp_path, chat_server):
    where = ["--lake", lake.root, "--endpoint", chat_server.base_url, "--model", chat_server.model]
    config = tmp_path / "loop.yaml"
    config.write_text(yaml.safe_dump(LOOP))
    said = cli("run", *where, "--steps", 2, "--config", config, "--run-id", "cli")
    assert said.count("groups admitted") == 2
    rows = read_rollouts(lake, ["status", "reward"], run_id="cli").to_pylist()
    assert len(rows) == 2 * 3 * 4 and "ok" in {r["status"] for r in rows} <= {"ok", "wrong", "unparsable"}

    served = chat_server.stats()["served"]
    said = cli("reverify", "--lake", lake.root, "--run", "cli")
    assert "24 rollouts, 0 changed" in said  # the same verifier: every reward as it was, from the cache
    assert chat_server.stats()["served"] == served  # and no model call
    (again,) = {r for r in read_rollouts(lake, ["run_id"])["run_id"].to_pylist() if r.startswith("cli.reverified-")}
    assert read_rollouts(lake, ["reward"], run_id=again)["reward"].to_pylist() == [r["reward"] for r in rows]

    said = cli("assemble", "--lake", lake.root, "--run", "cli", "--out", tmp_path / "assembled")
    sft = [json.loads(line) for line in (tmp_path / "assembled" / "sft.jsonl").read_text().splitlines()]
    finished = read_rollouts(lake, ["prompt_id", "status", "finish_reason"], run_id="cli").to_pylist()
    verified = {r["prompt_id"] for r in finished if r["status"] == "ok" and r["finish_reason"] != "length"}
    assert len(sft) == len(verified) > 0 and f"{len(sft)} SFT examples" in said  # one per prompt with a verified one
    assert all(len(example["messages"][-1]["content"].strip()) <= 20 for example in sft)  # verified: short

    served = chat_server.stats()["served"]
    said = cli("calibrate", *where, "--k", 4, "--max-tokens", 8, "--seed", 1)
    assert "5 prompts, mean pass rate" in said and chat_server.stats()["served"] == served + 5
    calibration = lake.read("rl/calibration").to_pylist()
    assert len(calibration) == 5 and {r["model"] for r in calibration} == {"tiny-qwen2"}
    assert all(r["scored"] == 4 and r["pass_rate"] == r["passed"] / 4 for r in calibration)

    # A new calibration asks afresh (another checkpoint may answer under the same name); a resumed one pays nothing
    # for what it asked.
    first = calibration[0]["calibration_id"]
    cli("calibrate", *where, "--k", 4, "--max-tokens", 8, "--seed", 1)
    assert chat_server.stats()["served"] == served + 10
    cli("calibrate", *where, "--k", 4, "--max-tokens", 8, "--seed", 1, "--resume", first)
    assert chat_server.stats()["served"] == served + 10
    assert len({r["calibration_id"] for r in lake.read("rl/calibration").to_pylist()}) == 2


def test_a_trainer_pulls_token_exact_batches_and_a_step_sampled_for_an_old_policy_is_dropped_stale(lake, chat_server):
    config = LoopConfig.model_validate({**LOOP, "groups": {**LOOP["groups"], "max_staleness": 1}})
    endpoint = Endpoint(chat_server.base_url, chat_server.model, cache=RequestCache.of_lake(lake.root))
    plane = DataPlane(lake, endpoint, config, run_id="served", rewards=Rewards(lake.root, workers=1))
    service = Service(plane, ahead=1)
    server = serve(service, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        batch = httpx.get(f"{url}/batch", params={"policy_version": 0}, timeout=60).json()
        assert batch["step"] == 0 and len(batch["groups"]) + sum(batch["dropped"].values()) == 3
        kept = read_rollouts(lake, run_id="served").to_pylist()
        for group in batch["groups"]:
            for i, rollout in enumerate(group["rollouts"]):
                (row,) = [r for r in kept if r["prompt_id"] == group["prompt_id"] and r["rollout_index"] == i]
                assert rollout["completion_token_ids"] == row["completion_token_ids"]  # what was sampled
                assert rollout["prompt_token_ids"] == row["prompt_token_ids"]
                assert rollout["advantage"] == pytest.approx(row["advantage"])
        # Step 1 was sampled ahead for policy 0 while the trainer moved to policy 2: too stale to train on.
        batch = httpx.get(f"{url}/batch", params={"policy_version": 2}, timeout=60).json()
        assert batch["step"] == 1 and batch["groups"] == [] and batch["dropped"] == {"stale": 3}
        stats = httpx.get(f"{url}/stats", timeout=10).json()
        assert stats["steps"] == 2 and stats["dropped_stale"] == 3 and stats["policy_version"] == 2
        assert httpx.get(f"{url}/nowhere", timeout=10).status_code == 404
    finally:
        server.shutdown()
        service.close()


def test_a_served_loop_answers_a_persistent_fault_with_503_and_asks_the_step_again_once_the_endpoint_is_back(
    lake, chat_server
):
    endpoint = Endpoint(chat_server.base_url, chat_server.model, retries=1, backoff_s=0.01, timeout_s=30)
    plane = DataPlane(lake, endpoint, LoopConfig.model_validate(LOOP), run_id="down", rewards=Rewards(lake.root))
    service = Service(plane, ahead=1)
    server = serve(service, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        chat_server.control(faults=[{"status": 503}] * 50)  # more than the step's asks and retries can use
        answer = httpx.get(f"{url}/batch", params={"policy_version": 0}, timeout=60)
        assert answer.status_code == 503 and "failed 2 times" in answer.json()["error"]
        chat_server.control(faults=[])  # the endpoint is back
        answer = httpx.get(f"{url}/batch", params={"policy_version": 0}, timeout=60)
        assert answer.status_code == 200 and answer.json()["step"] == 0  # the failed step, asked again
        assert httpx.get(f"{url}/batch", params={"policy_version": 0}, timeout=60).json()["step"] == 1
    finally:
        server.shutdown()
        service.close()
