"""Silver: canonical records made clean (normalised, validated) and deduplicated across the corpus."""
