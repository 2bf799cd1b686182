"""RL: the prompt bank's rewards and the online data plane.

Rewards: verifiers (verifiers.py, run in killable workers: verifier_pool.py), several of them weighted (composite.py),
the code sandbox (sandbox.py), the reward cache (reward_cache.py), and the trainers' reward functions (trainers.py
for TRL, verl_reward.py for verl). The data plane: the policy's completions (endpoint.py, request_cache.py,
policy.py), the bank and its calibration (bank.py, calibrate.py), groups and their admission (groups.py), the
curriculum (curriculum.py), the loop (dataplane.py) and its HTTP service (serve.py), the rollouts table
(rollouts.py), reverification (reverify.py), assembly into SFT and preference data (assemble.py), and the
reward-hacking alarm (alarm.py)."""
