"""CapFilt's bootstrap graph: web (url, caption) pairs in; captioned, filtered shards out.

Entry points: `run_bootstrap(BootstrapSettings)` (pipelines.bootstrap.run), `capfilt bootstrap`,
and `python -m pipelines.bootstrap` for `ray job submit`.
"""
