"""Gold: silver projected per regime, split by prompt group, and exported in the formats trainers read."""
