"""The benchmark harnesses ``interlock bench`` runs (shipped with the package).

* :mod:`interlock.bench.perf` - latency and throughput against the transport and compute floors;
* :mod:`interlock.bench.safety` - catastrophes prevented under shift, in real environments;
* :mod:`interlock.bench.docs` - the generated sections of ``docs/benchmarks.md``.

Standalone scripts (ensemble, CEL binding, audit throughput, reachability) stay in ``benchmarks/``
of the source checkout.
"""
