"""On-demand benchmarks (not run in CI); each writes benchmarks/results/<name>.json."""
