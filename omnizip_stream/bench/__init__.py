"""Benchmarks of the pipeline: offline prefill, the stream engine, and streaming against re-prefilling.

The scripts in ``scripts/`` (``bench_prefill.py``, ``bench_engine.py``, ``bench_stream.py``) and
``omnizip bench`` are thin wrappers around these modules. They read the pipeline's own counters
(window reports, query results, clip answers) rather than re-timing it, and write JSON with the
environment, versions and the resolved configuration. Nothing heavy is imported with this package.
"""
