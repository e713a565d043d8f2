"""Một cửa: the one-stop desk example application (app.py)."""
