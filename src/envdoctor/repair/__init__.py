"""Fixes: plan (from the remedies checks computed) → show → apply with rollback → verify."""
