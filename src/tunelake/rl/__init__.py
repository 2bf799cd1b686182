"""RL prompt banks: verifiers, the code sandbox and the reward cache."""
