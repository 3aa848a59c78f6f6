"""Phoebus .bob screens generated from parameter declarations (issue 4)."""
