"""Quản lý văn bản: the document-management example application (app.py)."""
