"""RL prompt banks: verifiers (run in killable workers), the code sandbox and the reward cache; the online data
plane's rollout groups, curriculum, rollouts table and assembly."""
