"""Training machinery behind the thin trainer classes in ``trainers/``."""
