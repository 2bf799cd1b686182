"""Engines run stages; stages never know which engine runs them."""
