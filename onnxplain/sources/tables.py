"""Tabular rows read from a CSV file: the model's ``(rows, features)`` input, and the columns' names.

    rows = read_csv("data.csv", columns="age,income,score", input_name="x", model_input=vi)
    rows.inputs["x"]        # (N, 3), the model input's dtype, columns in the order asked for
    rows.feature_names      # ["age", "income", "score"]

Parsed with Python's :mod:`csv` module into a numpy array (no pandas).  The first row must be a header
naming the columns.  ``columns`` selects the features and orders them as the model expects them (default:
every column but those in ``exclude`` and the ``id_column``); the other columns may hold anything (an id, a
label as text) and are never parsed.  Every mistake -- no header, an unknown or repeated column, a cell
that is not a number, a missing value, a number of features the model does not take -- is a ``ValueError``
naming the file, the line and the column, raised before anything is computed.
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np

from . import Rows

#: cells read as a missing value (case-insensitive, after stripping blanks): refused unless ``fill`` is given
MISSING = ("", "nan", "na", "n/a", "null", "none")


def column_list(columns, what: str = "columns") -> list[str] | None:
    """Column names from a list, or from one string ``"a,b,c"``; ``None`` stays ``None``."""
    if columns is None:
        return None
    names = columns.split(",") if isinstance(columns, str) else list(columns)
    names = [str(n).strip() for n in names]
    if not names or any(not n for n in names):
        raise ValueError(f"{what} must name columns (a list, or names separated by commas), got {columns!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"{what} names {', '.join(map(repr, repeated))} more than once")
    return names


def read_csv(path, columns=None, *, input_name: str = "input", model_input=None, exclude=None,
             id_column: str | None = None, fill: float | None = None, dtype=None, delimiter: str = ",") -> Rows:
    """The rows of the CSV file ``path`` as the model input ``input_name``: :class:`~onnxplain.sources.Rows`
    with ``feature_names`` (the chosen columns, in order) and ``names`` (the ``id_column``'s values, else
    ``row 0``, ``row 1``, ...).

    columns: the feature columns, in the order the model takes them (a list, or ``"a,b,c"``); default every
        column but ``exclude`` (a list or ``"a,b"``) and ``id_column``.
    model_input: the model input's ``ValueInfoProto`` (or its shape): it must be a 2-D ``(rows, features)``
        floating-point input; its static feature count is checked against the columns, and the array takes its
        dtype.  Without it the array is ``dtype`` (default float32).
    fill: the number put in missing cells (empty, or ``nan``/``NA``/``null``...); without it a missing cell
        is an error naming its line and column.
    Cells are parsed by Python's ``float`` (``1e-3``, ``-2``, ``inf``; blanks around a number are ignored).
    """
    shape, model_dtype = _model_input_shape(model_input, input_name)
    dtype = np.dtype(model_dtype if model_dtype is not None else (dtype or np.float32))
    header, lines = _read_lines(path, delimiter)
    chosen = _chosen_columns(path, header, columns, exclude, id_column)
    _check_feature_count(chosen, shape, input_name, path)
    index = [header.index(c) for c in chosen]
    values = np.empty((len(lines), len(index)), dtype=np.float64)
    for r, (line, cells) in enumerate(lines):
        if len(cells) != len(header):
            raise ValueError(f"{_where(path, line)}: {len(cells)} cell(s), but the header names {len(header)} "
                             f"columns")
        for c, k in enumerate(index):
            values[r, c] = _number(cells[k], fill, path, line, header[k])
    names = ([cells[header.index(id_column)].strip() for _, cells in lines] if id_column is not None
             else [f"row {r}" for r in range(len(lines))])
    return Rows(inputs={input_name: values.astype(dtype)}, names=names, feature_names=chosen,
                extra={"path": os.fspath(path), "lines": [line for line, _ in lines]})


def _where(path, line: int) -> str:
    return f"{os.fspath(path)!r}, line {line}"


def _read_lines(path, delimiter: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header's names and every data line as ``(line number, cells)``; blank lines are skipped."""
    path = os.fspath(path)
    if not path.lower().endswith(".csv"):
        raise ValueError(f"a table is read from a .csv file, got {path!r}")
    if not os.path.isfile(path):
        raise ValueError(f"no such CSV file {path!r}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:   # utf-8-sig: a spreadsheet's byte-order mark
            reader = csv.reader(f, delimiter=delimiter)
            header, lines = None, []
            for cells in reader:
                if not cells or all(not c.strip() for c in cells):
                    continue
                if header is None:
                    header = [c.strip() for c in cells]
                else:
                    lines.append((reader.line_num, cells))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"cannot read {path!r} as a CSV file: {e}") from e
    if header is None:
        raise ValueError(f"{path!r} is empty: a CSV file needs a header row naming its columns")
    _check_header(path, header)
    if not lines:
        raise ValueError(f"{path!r} has a header but no rows")
    return header, lines


def _check_header(path: str, header: list[str]) -> None:
    if all(_is_number(c) for c in header):
        raise ValueError(f"{path!r} has no header row (its first row {header[:6]} holds numbers): the first row "
                         f"must name the columns")
    empty = [k for k, c in enumerate(header) if not c]
    if empty:
        raise ValueError(f"{path!r}: the header leaves column(s) {empty} (counting from 0) without a name")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise ValueError(f"{path!r}: the header names {', '.join(map(repr, repeated))} more than once")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _chosen_columns(path, header: list[str], columns, exclude, id_column) -> list[str]:
    """The feature columns, in order: ``columns`` as given, or every column but ``exclude`` and ``id_column``."""
    columns = column_list(columns)
    exclude = column_list(exclude, "exclude") or []
    named = (columns or []) + exclude + ([id_column] if id_column is not None else [])
    unknown = [c for c in named if c not in header]
    if unknown:
        raise ValueError(f"{os.fspath(path)!r} has no column(s) {', '.join(map(repr, unknown))}; its columns are "
                         f"{', '.join(header)}")
    if columns is None:
        columns = [c for c in header if c not in exclude and c != id_column]
    clash = [c for c in columns if c in exclude or c == id_column]
    if clash:
        raise ValueError(f"column(s) {', '.join(map(repr, clash))} are both features and excluded (or the id "
                         f"column)")
    if not columns:
        raise ValueError(f"{os.fspath(path)!r}: no feature columns left (columns {header}, excluded "
                         f"{exclude + ([id_column] if id_column else [])})")
    return columns


def _number(cell: str, fill, path, line: int, column: str) -> float:
    text = cell.strip()
    if text.lower() in MISSING:
        if fill is None:
            raise ValueError(f"{_where(path, line)}, column {column!r}: missing value ({cell!r}); give a number to "
                             f"put in missing cells (fill=, --fill) or complete the file")
        return float(fill)
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{_where(path, line)}, column {column!r}: {cell!r} is not a number") from None
    if math.isnan(value):   # e.g. "+nan", which float() reads
        raise ValueError(f"{_where(path, line)}, column {column!r}: {cell!r} is not a number")
    return value


# ---------------------------------------------------------------------- the model's input
def _model_input_shape(model_input, input_name: str):
    """``(shape, dtype)`` of the model input: dims as ints (``None`` where dynamic), and its numpy dtype (None
    when only a shape is given); a rank other than 2 or a non-float input is refused."""
    if model_input is None:
        return None, None
    if hasattr(model_input, "type"):    # a ValueInfoProto
        tensor = model_input.type.tensor_type
        from ..graph import np_dtype
        dtype = np.dtype(np_dtype(tensor.elem_type))
        shape = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not np.issubdtype(dtype, np.floating):
            raise ValueError(f"a CSV feeds a floating-point input of features, but input {input_name!r} is "
                             f"{dtype.name}")
    else:
        shape, dtype = [None if d is None or (isinstance(d, int) and d < 0) or isinstance(d, str) else int(d)
                        for d in model_input], None
    if len(shape) != 2:
        raise ValueError(f"a CSV feeds a 2-D (rows, features) input, but input {input_name!r} has shape "
                         f"{_shown(shape)}")
    return shape, dtype


def _shown(shape) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _check_feature_count(chosen: list[str], shape, input_name: str, path) -> None:
    if shape is None or shape[1] is None or shape[1] == len(chosen):
        return
    raise ValueError(f"input {input_name!r} of the model takes {shape[1]} features (shape {_shown(shape)}), but "
                     f"{len(chosen)} column(s) of {os.fspath(path)!r} are chosen ({', '.join(chosen)}); choose "
                     f"{shape[1]} with columns= (--columns a,b,c) or exclude= (--exclude)")
