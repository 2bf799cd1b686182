"""The RL data plane: verifiers that score a completion against a record's gold answer, run in killable workers."""
