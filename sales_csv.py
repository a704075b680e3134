"""Reading and validating the sales CSV, and writing previsoes.csv (used by ttm_model.py; never imports it)."""

import csv
import difflib
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

logger = logging.getLogger("ttm_model")


class InputError(ValueError):
    """A problem with the user's data or settings; reported as one line, without a traceback."""


def _sniff_csv(path: Path) -> tuple[str, str, str, str]:
    """Return (encoding, separator, decimal mark, header line) of a CSV file from its first 64 KB."""
    with path.open("rb") as f:
        head = f.read(65536)
    encoding = "utf-8-sig"
    try:
        text = head.decode(encoding)
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not just a multi-byte character cut at the 64 KB boundary
            encoding = "latin-1"
        text = head.decode(encoding, errors="ignore")
    header = text.splitlines()[0] if text.strip() else ""
    sep = max((";", ",", "\t"), key=header.count)
    decimal = "," if sep != "," and any(_has_decimal_comma(line, sep) for line in text.splitlines()[1:200]) else "."
    return encoding, sep, decimal, header


def _has_decimal_comma(line: str, sep: str) -> bool:
    return any(
        field.strip().replace(".", "").replace(",", "", 1).lstrip("-").isdigit() and "," in field
        for field in line.split(sep)
    )


def _rows(mask: pd.Series | np.ndarray, limit: int = 5) -> str:
    """File line numbers (header is line 1) of the first offending rows."""
    lines = np.flatnonzero(np.asarray(mask)) + 2
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"line(s) {', '.join(map(str, lines[:limit]))}{more}"


def _strip(text: pd.Series) -> pd.Categorical:
    """Text with surrounding spaces removed, kept categorical: ids and dates repeat, so each distinct value is
    stripped (and, for dates, parsed) once."""
    codes, uniques = pd.factorize(text)
    stripped_codes, stripped = pd.factorize(pd.Index(uniques.astype(str)).str.strip(), sort=True)
    return pd.Categorical.from_codes(stripped_codes[codes], stripped)


def _parse_dates(text: pd.Categorical, path: str, column: str) -> np.ndarray:
    """ISO dates (2024-01-31) and Brazilian dd/mm/yyyy dates, also mixed in one file, parsed once per distinct date."""
    distinct = text.categories.to_series()
    dates = pd.to_datetime(distinct, format="ISO8601", errors="coerce")
    brazilian = dates.isna()
    if brazilian.any():
        dates[brazilian] = pd.to_datetime(distinct[brazilian], format="%d/%m/%Y", errors="coerce")
        read = int((brazilian & dates.notna()).to_numpy()[text.codes].sum())
        if read:
            logger.warning("%s: read %d date(s) in column %r as dd/mm/yyyy", path, read, column)
    if dates.dt.tz is not None:
        dates = dates.dt.tz_localize(None)
    bad = dates.isna().to_numpy()[text.codes]
    if bad.any():
        raise InputError(
            f"{path}: column {column!r} has unparseable dates at {_rows(bad)} "
            f"(e.g. {text[bad][0]!r}); use YYYY-MM-DD or dd/mm/yyyy"
        )
    return dates.to_numpy()[text.codes]


def _parse_numbers(
    text: pd.Series, *, path: str, column: str, decimal: str, thousands: str | None, negative_ok: bool = False
) -> pd.Series:
    """Floats from a target (non-negative) or control column (text when the reader could not parse it: separators
    to repair)."""
    values, empty = text, text.isna()
    if not pd.api.types.is_numeric_dtype(values):
        raw = values.astype(str).str.strip()
        if thousands:
            raw = raw.str.replace(thousands, "", regex=False)
        if decimal == ",":
            raw = raw.str.replace(",", ".", regex=False)
        values = pd.to_numeric(raw, errors="coerce")
        empty = raw.str.lower().isin(["", "nan", "na", "null", "none"])
        bad = values.isna() & ~empty
        if bad.any():
            raise InputError(
                f"{path}: column {column!r} has non-numeric values at {_rows(bad)} "
                f"(e.g. {text[bad].iloc[0]!r}); use plain numbers such as 1234.5 or 1.234,5"
            )
    if empty.any():
        raise InputError(
            f"{path}: column {column!r} has missing values (NaN/empty) at {_rows(empty)}; "
            "fill them (0 for weeks without sales) or delete those rows"
        )
    if not negative_ok and (values < 0).any():
        raise InputError(
            f"{path}: column {column!r} has negative values at {_rows(values < 0)}; "
            "net returns into the week's sales or remove those rows"
        )
    return values.astype("float64")


def _column_names(path: str, header: list[str], required: Sequence[str]) -> dict[str, str]:
    """Each raw header name -> its name as used here (stripped, lower case); every required column must be there."""
    names = {raw: raw.strip().lower() for raw in header}
    missing = [c for c in required if c not in names.values()]
    if missing:
        hints = [
            f"{m!r} (found {close[0]!r}?)" if (close := difflib.get_close_matches(m, names.values(), n=1)) else repr(m)
            for m in missing
        ]
        raise InputError(
            f"{path}: missing column(s) {', '.join(hints)}; the header has {list(names.values())}; "
            f"rename the column(s) or change TARGET_COLUMNS/ID_COLUMNS/DATE_COLUMN/CONTROL_COLUMNS"
        )
    extra = [name for name in names.values() if name not in required]
    if extra:
        logger.warning("%s: ignoring extra column(s) %s", path, extra)
    return {raw: name for raw, name in names.items() if name in required}


def _read_columns(
    file: Path, path: str, names: dict[str, str], *, text_columns: Sequence[str], encoding: str, sep: str, decimal: str
) -> pd.DataFrame:
    """The `names` columns of the file: text ones as categoricals, numbers as floats, or as text when pyarrow cannot
    read them (thousands separators, typos) for _parse_numbers to repair or report.

    pyarrow's reader: 0.05 s against 0.13 s for pandas.read_csv on 520,000 rows (tests/benchmarks/bench_predict.py).
    """
    text = pa.dictionary(pa.int32(), pa.string())
    convert = pa_csv.ConvertOptions(
        include_columns=list(names),
        column_types={raw: text for raw, name in names.items() if name in text_columns},
        decimal_point=decimal,
    )
    parse = pa_csv.ParseOptions(delimiter=sep)
    try:
        try:
            sniffed = pa_csv.ReadOptions(encoding=encoding.replace("utf-8-sig", "utf8"))  # pyarrow skips a BOM itself
            table = pa_csv.read_csv(file, sniffed, parse, convert)
        except pa.ArrowInvalid as err:
            if "UTF8" not in str(err):
                raise
            table = pa_csv.read_csv(file, pa_csv.ReadOptions(encoding="latin-1"), parse, convert)  # a late byte
    except pa.ArrowInvalid as err:
        raise InputError(
            f"{path}: not a readable CSV ({str(err).splitlines()[0]}); export it as CSV with ',' or ';' separators"
        ) from err
    df = table.rename_columns([names[raw] for raw in table.column_names]).to_pandas(
        split_blocks=True, self_destruct=True
    )
    del table
    pa.default_memory_pool().release_unused()  # hand the parse buffers back to the OS, not kept for later pyarrow use
    if df.empty:
        raise InputError(f"{path}: header only, no data rows; add at least one row per week, product and UF")
    return df


def read_sales_csv(
    path: str,
    *,
    date_column: str,
    id_columns: Sequence[str],
    target_columns: Sequence[str],
    control_columns: Sequence[str] = (),
    setting: str = "DATA_PATH",
) -> pd.DataFrame:
    """Read and validate the sales CSV (or, with no targets, the future file of control columns); ids stay text as
    written (categoricals, surrounding spaces removed). Controls are numbers like targets, negative ones allowed.

    Raises:
        FileNotFoundError, InputError: with the file, column, first offending lines and what to change.
    """
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(
            f"{path}: file not found; set --{setting}=<your CSV> (columns {date_column}, "
            f"{', '.join([*id_columns, *target_columns, *control_columns])})"
        )
    if file.is_dir():
        raise InputError(f"{path}: is a folder, not a CSV file; set --{setting} to the CSV inside it")
    try:
        encoding, sep, decimal, header_line = _sniff_csv(file)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror}); check the file's permissions") from err
    if not header_line.strip():
        raise InputError(f"{path}: file is empty; expected a header line and one row per week, product and UF")
    thousands = "." if decimal == "," else ("," if sep != "," else None)
    names = _column_names(
        path,
        next(csv.reader([header_line], delimiter=sep)),
        [date_column, *id_columns, *target_columns, *control_columns],
    )
    df = _read_columns(
        file, path, names, text_columns=(date_column, *id_columns), encoding=encoding, sep=sep, decimal=decimal
    )
    out = pd.DataFrame({date_column: _parse_dates(_strip(df[date_column]), path, date_column)})
    for col in id_columns:
        ids = _strip(df[col])
        if (ids == "").any():
            raise InputError(f"{path}: column {col!r} is empty at {_rows(ids == '')}; fill in the id")
        out[col] = ids
    for col in (*target_columns, *control_columns):
        out[col] = _parse_numbers(
            df[col], path=path, column=col, decimal=decimal, thousands=thousands, negative_ok=col in control_columns
        )
    logger.info(
        "Loaded %s: %d rows, %s to %s", path, len(out), out[date_column].min().date(), out[date_column].max().date()
    )
    return out


def write_forecasts(frame: pd.DataFrame, path: Path, *, date_column: str) -> None:
    """previsoes.csv with dates as YYYY-MM-DD and 4 decimals, atomically.

    pyarrow's writer: 0.04 s against 0.20 s for DataFrame.to_csv on 2,000 series (float formatting); it quotes text.
    """
    table = pa.Table.from_pandas(frame.round(4), preserve_index=False)
    column = table.schema.get_field_index(date_column)
    table = table.set_column(column, date_column, table[date_column].cast(pa.date32()))
    staging = path.with_name(path.name + ".tmp")
    pa_csv.write_csv(table, staging)
    staging.replace(path)
    logger.info(
        "Wrote %s: %d rows, weeks %s to %s",
        path,
        len(frame),
        frame[date_column].min().date(),
        frame[date_column].max().date(),
    )
