"""RL prompt banks: verifiers (run in killable workers), the code sandbox and the reward cache."""
