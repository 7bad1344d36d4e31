"""Semi-supervised modes (to come)."""
