"""Benchmarks: training throughput against the seed recipe (`python -m bench.train`), data
preparation (`python -m bench.data`), serving latency of the local endpoint
(`python -m bench.serve`); results land in bench/results/."""
