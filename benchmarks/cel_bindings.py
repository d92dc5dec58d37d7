"""Micro-benchmark of the maintained Python CEL bindings, side by side in one run.

Interlock evaluates one compiled CEL rule per decision, so what matters is the
cost of *evaluating* a compiled expression against a small activation (a few
signals, a short observation vector). Run::

    python benchmarks/cel_bindings.py

and it prints microseconds per evaluation for each binding that is installed,
plus the ratio to the fastest.
"""

from __future__ import annotations

import json
import sys
import time

EXPR = "signals.uncertainty.q_std > 0.3 && obs[0] > 0.5 || action == 1"


def _activation() -> dict:
    return {
        "signals": {"uncertainty": {"q_std": 0.42, "ratio": 0.1}, "action_space": {"invalid": 0.0}},
        "obs": [0.7, -0.1, 0.02, 0.3],
        "action": 0,
    }


def bench_common_expression_language(data: dict, n: int) -> float:
    import cel

    program = cel.compile(EXPR)
    assert program.execute(data) is True
    start = time.perf_counter()
    for _ in range(n):
        program.execute(data)
    return (time.perf_counter() - start) / n


def bench_cel_expr_python(data: dict, n: int) -> float:
    from cel_expr_python import cel

    env = cel.NewEnv(
        variables={
            "signals": cel.Type.Map(cel.Type.STRING, cel.Type.Map(cel.Type.STRING, cel.Type.DOUBLE)),
            "obs": cel.Type.List(cel.Type.DOUBLE),
            "action": cel.Type.INT,
        }
    )
    expr = env.compile(EXPR)
    assert expr.eval(data=data).value() is True
    start = time.perf_counter()
    for _ in range(n):
        expr.eval(data=data)
    return (time.perf_counter() - start) / n


def bench_cel_python(data: dict, n: int) -> float:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(EXPR))
    assert bool(program.evaluate(celpy.json_to_cel(data))) is True
    start = time.perf_counter()
    for _ in range(n):
        # Conversion is part of the cost: cel-python needs its own value types.
        program.evaluate(celpy.json_to_cel(data))
    return (time.perf_counter() - start) / n


BINDINGS = {
    "common-expression-language (Rust cel crate)": bench_common_expression_language,
    "cel-expr-python (Google cel-cpp)": bench_cel_expr_python,
    "cel-python (pure Python)": bench_cel_python,
}


def main(n: int = 20_000) -> dict[str, float]:
    data = _activation()
    results: dict[str, float] = {}
    for name, fn in BINDINGS.items():
        try:
            iters = n if "pure" not in name else max(n // 20, 200)
            results[name] = min(fn(data, iters) for _ in range(3)) * 1e6
        except ImportError:
            print(f"skip {name}: not installed", file=sys.stderr)
    fastest = min(results.values())
    for name, us in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"{name:48s} {us:8.2f} us/eval  x{us / fastest:6.1f}")
    return results


if __name__ == "__main__":
    out = main()
    if "--json" in sys.argv:
        print(json.dumps(out, indent=2))
