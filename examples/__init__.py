"""Relying parties that sign in through congvu with standard OpenID Connect client libraries.

A package so that the two applications can share `examples/rp_common.py` and the tests can
start them in-process: run one with `python -m examples.van_ban.app` from the repository root.
"""
