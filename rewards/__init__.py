"""Entitlement kinds and their semantics: validity, single-use versus standing, stacking and caps."""
