"""Benchmarks: each module runs the real ``distributor`` command against local servers.

Run them all with ``make bench``, or one with ``python -m bench.<module>``.
"""
