"""Re-derive the wafer stacks' fitted parameters from the calibration table, and print them.

The fit behind ``profiles/stacks/cs-2024-08.toml`` and ``cs-current.toml``
(docs/performance-model.md, "Serving stacks"), least squares on log(predicted / measured):

1. ``cs-2024-08``: ``layer_latency_s`` and ``reduction_s_per_width`` on rows 1-4 (launch stack,
   plain decoding; two configurations, two parameters).
2. ``cs-current``: ``layer_latency_s`` and the chat and reasoning acceptance rates on rows 5, 8,
   12, 13, 18, with ``reduction_s_per_width`` kept at step 1's value and the draft (EAGLE-style,
   ``k`` from the file) as given.

Then the Llama 3.1 405B prediction on the default wse3 (no 405B row is used by the fit).

Usage::

    .venv/bin/python scripts/fit_wafer_stacks.py
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from substrates.emulated.calibration import DATA_FILE, _read_rows, predict_point
from substrates.emulated.predict import predict_request
from substrates.emulated.profiles import ProfileCatalog, load_catalog
from substrates.emulated.sizing import size_deployment

ROWS = {int(r["row"]): r for r in _read_rows(DATA_FILE)}


def _with(
    catalog: ProfileCatalog,
    name: str,
    efficiency: dict[str, float],
    acceptance: dict[str, float] | None = None,
) -> ProfileCatalog:
    stack = catalog.stacks[name]
    update: dict[str, object] = {"efficiency": {**stack.efficiency, **efficiency}}
    if acceptance is not None and stack.speculation is not None:
        spec = stack.speculation
        update["speculation"] = spec.model_copy(
            update={"acceptance": {**spec.acceptance, **acceptance}}
        )
    return catalog.model_copy(
        update={"stacks": {**catalog.stacks, name: stack.model_copy(update=update)}}
    )


def _log_errors(catalog: ProfileCatalog, rows: Sequence[int]) -> list[float]:
    out = []
    for row in rows:
        r = ROWS[row]
        predicted = predict_point(r["metric"], r["agentrt_scenario"], catalog)
        out.append(math.log(predicted / float(r["value"])))
    return out


def _minimise(
    fun: Callable[[list[float]], float], x0: list[float], iters: int = 300
) -> list[float]:
    """Nelder-Mead (no SciPy in the environment): good enough for 2-3 smooth parameters."""
    n = len(x0)
    pts = [list(x0)] + [
        [v * (1.2 if i == j else 1.0) + (1e-3 if i == j else 0.0) for j, v in enumerate(x0)]
        for i in range(n)
    ]
    vals = [fun(p) for p in pts]
    for _ in range(iters):
        order = sorted(range(n + 1), key=vals.__getitem__)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        c = [sum(p[j] for p in pts[:-1]) / n for j in range(n)]
        xr = [2 * c[j] - pts[-1][j] for j in range(n)]
        fr = fun(xr)
        if fr < vals[0]:
            xe = [3 * c[j] - 2 * pts[-1][j] for j in range(n)]
            fe = fun(xe)
            pts[-1], vals[-1] = (xe, fe) if fe < fr else (xr, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = xr, fr
        else:
            xc = [(c[j] + pts[-1][j]) / 2 for j in range(n)]
            fc = fun(xc)
            if fc < vals[-1]:
                pts[-1], vals[-1] = xc, fc
            else:
                pts = [pts[0]] + [[(p[j] + pts[0][j]) / 2 for j in range(n)] for p in pts[1:]]
                vals = [vals[0]] + [fun(p) for p in pts[1:]]
    return pts[min(range(n + 1), key=vals.__getitem__)]


def main() -> None:
    base = load_catalog()
    clip = lambda a: min(max(a, 0.01), 0.995)  # noqa: E731

    def launch(x: list[float]) -> ProfileCatalog:
        return _with(
            base,
            "cs-2024-08",
            {"layer_latency_s": x[0] * 1e-6, "reduction_s_per_width": x[1] * 1e-9},
        )

    tau0, r = _minimise(
        lambda x: sum(e * e for e in _log_errors(launch(x), [1, 2, 3, 4])), [6.0, 2.0]
    )
    print(f"cs-2024-08: layer_latency_s = {tau0:.3f} us, reduction_s_per_width = {r:.4f} ns")
    fitted = launch([tau0, r])

    def current(x: list[float]) -> ProfileCatalog:
        return _with(
            fitted,
            "cs-current",
            {"layer_latency_s": x[0] * 1e-6, "reduction_s_per_width": r * 1e-9},
            {"chat": clip(x[1]), "reasoning": clip(x[2])},
        )

    rows = [5, 8, 12, 13, 18]
    x = _minimise(lambda x: sum(e * e for e in _log_errors(current(x), rows)), [6.0, 0.85, 0.7])
    print(
        f"cs-current: layer_latency_s = {x[0]:.3f} us, acceptance chat = {clip(x[1]):.3f}, "
        f"reasoning = {clip(x[2]):.3f}"
    )
    final = current(x)
    for row, err in zip([1, 2, 3, 4, *rows], _log_errors(final, [1, 2, 3, 4, *rows]), strict=True):
        print(f"  row {row:>2}: {math.expm1(err):+.1%}")
    dep = size_deployment(
        final.get_hardware("wse3"),
        final.get_model("llama-3.1-405b"),
        stack=final.stacks["cs-current"],
        catalog=final,
    )
    speed = predict_request(dep, 1000, 500).output_tokens_per_s
    print(f"llama-3.1-405b on wse3 (cs-current, {dep.pp} wafers): {speed:.1f} tok/s per user")


if __name__ == "__main__":
    main()
