"""``interlock bench perf``: latency and throughput of a realistic config against its floors."""
