"""Metrics (defined once, here), fold evaluation, tables, figures and the report."""
