"""Planning: what a cohort is (fingerprint) and what sabnet will do with it (plans.json)."""
