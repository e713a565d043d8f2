"""Tests of the example relying parties (examples/)."""
