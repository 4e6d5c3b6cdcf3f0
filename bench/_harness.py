"""The bench harness: what the scripts in bench/ share, so each says only what it measures.

The scripts run as ``python bench/NAME.py`` from the repository root, which puts this folder on
``sys.path``: they ``import _harness as harness`` (a private module, not a package to install).

- :func:`run`: one fine-tune into a run directory, reused when finished and resumed when interrupted;
- :func:`parser` and the ``add_*`` functions: the arguments several scripts take alike
  (``--data``, ``--seeds``, ``--seed``, ``--out``, ``--epochs`` and ``--image-size``);
- :func:`table`, :func:`pairs` and :func:`report`: the one way a bench ends: a plain-text table
  (columns aligned), its notes, then exactly one JSON line ``{"bench": NAME, ...}``;
- :func:`median`, :func:`mean_sd` and :func:`ratio`: the summaries the scripts compute.

Only the standard library is imported here (transferlab and torch inside :func:`run`), so ``--help``
stays fast and the clocks of ``time_to_accuracy.py``'s subprocesses, which start after importing
torch, see nothing more imported than before.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

# --------------------------------------------------------------------------- the runner


def run(config_or_overrides: object, out: str | Path) -> dict:
    """The metrics of one fine-tune in ``out``: read back when the run there is finished, else trained
    (resumed from its checkpoint where an interrupted run left one).

    ``config_or_overrides`` is a :class:`transferlab.RunConfig` (its ``out`` becomes ``out``) or the
    keyword arguments of :func:`transferlab.make_config` (without ``out``).
    """
    from dataclasses import replace

    import transferlab as tl
    from transferlab import rundir

    out = Path(out)
    if rundir.is_finished(out):
        return json.loads((out / rundir.METRICS).read_text())
    if isinstance(config_or_overrides, Mapping):
        config = tl.make_config(**{**config_or_overrides, "out": str(out)})
    else:
        config = replace(config_or_overrides, out=str(out))
    return tl.finetune(config, quiet=True, resume=(out / rundir.CHECKPOINT).exists()).metrics


# --------------------------------------------------------------------------- arguments


def parser(doc: str) -> argparse.ArgumentParser:
    """A script's parser, described by the first line of its docstring."""
    return argparse.ArgumentParser(description=doc.splitlines()[0])


def add_data(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    """``--data``: a dataset name (``elpv``) or an image folder; required where there is no default."""
    parser.add_argument("--data", required=default is None, default=default,
                        help="a dataset name (elpv) or an image folder" + (f" (default {default})" if default else ""))


def add_seeds(parser: argparse.ArgumentParser, default: Sequence[int] = (0, 1, 2)) -> None:
    """``--seeds``: one run per seed."""
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default),
                        help=f"(default: {' '.join(map(str, default))})")


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--seed``: the one seed of a script that runs one."""
    parser.add_argument("--seed", type=int, default=0)


def add_out(parser: argparse.ArgumentParser, prefix: str) -> None:
    """``--out``: where the runs go, by default ``runs/PREFIX-<data's name>`` (see :func:`out_dir`)."""
    parser.add_argument("--out", default=None,
                        help=f"folder of the runs (default: runs/{prefix}-<data's name>); finished runs are reused")
    parser.set_defaults(out_prefix=prefix)


def out_dir(args: argparse.Namespace) -> Path:
    """``--out``, or ``runs/PREFIX-<data's name>``."""
    return Path(args.out or f"runs/{args.out_prefix}-{Path(args.data).name}")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """``--epochs`` and ``--image-size``: the budget of every run (default: the preset's)."""
    parser.add_argument("--epochs", type=int, default=None, help="(default: the preset's)")
    parser.add_argument("--image-size", type=int, default=None, help="(default: the weights' own)")


def run_options(args: argparse.Namespace) -> dict:
    """The run options of :func:`add_run_options` that were given, as :func:`transferlab.make_config` takes them."""
    return {k: v for k, v in {"epochs": args.epochs, "image_size": args.image_size}.items() if v is not None}


# --------------------------------------------------------------------------- the result

Column = tuple  # (header, key) or (header, key, format spec); key: a row's key or a function of the row


def _value(row: Mapping, key: str | Callable) -> object:
    return key(row) if callable(key) else row.get(key)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(rows: Sequence[Mapping], columns: Sequence[Column], title: str | None = None, header: bool = True) -> str:
    """``rows`` as a plain-text table under an optional ``title``: one line per row, columns aligned
    (numbers to the right, text to the left), two spaces apart. ``None`` prints as ``-``.

    Each column is ``(header, key)`` or ``(header, key, spec)``: ``key`` names a row's value or is a
    function of the row, ``spec`` a format spec for the value (``".4f"``; none: ``str``).
    """
    specs = [(c[0], c[1], c[2] if len(c) > 2 else "") for c in columns]
    values = [[_value(row, key) for _, key, _ in specs] for row in rows]
    cells = [["-" if v is None else format(v, spec) for v, (_, _, spec) in zip(line, specs)] for line in values]
    right = [all(_is_number(line[i]) for line in values if line[i] is not None) for i in range(len(specs))]
    lines = ([[name for name, _, _ in specs]] if header else []) + cells
    widths = [max(len(line[i]) for line in lines) for i in range(len(specs))]
    text = ["  ".join(cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(line, widths, right)).rstrip()
            for line in lines]
    return "\n".join(([title] if title is not None else []) + text)


def pairs(values: Mapping, title: str | None = None) -> str:
    """A summary dict as a two-column table: each key and its value."""
    return table([{"key": k, "value": v} for k, v in values.items()], [("", "key"), ("", "value")], title,
                 header=False)


def report(bench: str, payload: Mapping, *blocks: str | None) -> None:
    """How every bench ends: ``blocks`` (tables and notes; None ones skipped), then exactly one JSON
    line, ``{"bench": bench, **payload}``."""
    if "bench" in payload:
        raise ValueError("the payload names no bench; report() adds it")
    for block in blocks:
        if block is not None:
            print(block)
    print(json.dumps({"bench": bench, **payload}), flush=True)


# --------------------------------------------------------------------------- summaries


def median(values: Iterable[float], digits: int | None = None) -> float:
    """The median, rounded to ``digits`` where given."""
    value = statistics.median(values)
    return value if digits is None else round(value, digits)


def mean_sd(values: Sequence[float], digits: int | None = None) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for one value), rounded to ``digits`` where given."""
    mean = statistics.mean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return (mean, sd) if digits is None else (round(mean, digits), round(sd, digits))


def ratio(numerator: float | None, denominator: float | None, digits: int | None = None,
          floor: float = 0.0) -> float | None:
    """``numerator / denominator`` rounded to ``digits`` where given; None when either is missing or the
    denominator is not above ``floor``."""
    if numerator is None or denominator is None or denominator <= floor:
        return None
    value = numerator / denominator
    return value if digits is None else round(value, digits)
