"""The sales CSV: read and validated whole or split by series into parts, and previsoes.csv written atomically."""

import csv
import difflib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv

logger = logging.getLogger(__name__)


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


def _rows(mask: pd.Series | np.ndarray, first_row: int = 0, limit: int = 5) -> str:
    """File line numbers (header is line 1) of the first offending rows; first_row: the file row of mask[0]."""
    lines = np.flatnonzero(np.asarray(mask)) + 2 + first_row
    more = f" and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"line(s) {', '.join(map(str, lines[:limit]))}{more}"


def _strip(text: pd.Series) -> pd.Categorical:
    """Text with surrounding spaces removed, kept categorical: ids and dates repeat, so each distinct value is
    stripped (and, for dates, parsed) once."""
    codes, uniques = pd.factorize(text)
    stripped_codes, stripped = pd.factorize(pd.Index(uniques.astype(str)).str.strip(), sort=True)
    return pd.Categorical.from_codes(stripped_codes[codes], stripped)


def _parse_dates(text: pd.Categorical, path: str, column: str, first_row: int = 0) -> np.ndarray:
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
            f"{path}: column {column!r} has unparseable dates at {_rows(bad, first_row)} "
            f"(e.g. {text[bad][0]!r}); use YYYY-MM-DD or dd/mm/yyyy"
        )
    return dates.to_numpy()[text.codes]


def _parse_numbers(
    text: pd.Series,
    *,
    path: str,
    column: str,
    decimal: str,
    thousands: str | None,
    negative_ok: bool = False,
    first_row: int = 0,
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
                f"{path}: column {column!r} has non-numeric values at {_rows(bad, first_row)} "
                f"(e.g. {text[bad].iloc[0]!r}); use plain numbers such as 1234.5 or 1.234,5"
            )
    if empty.any():
        raise InputError(
            f"{path}: column {column!r} has missing values (NaN/empty) at {_rows(empty, first_row)}; "
            "fill them (0 for weeks without sales) or delete those rows"
        )
    if not negative_ok and (values < 0).any():
        raise InputError(
            f"{path}: column {column!r} has negative values at {_rows(values < 0, first_row)}; "
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


@dataclass(frozen=True)
class _Csv:
    """How to read a CSV file (from _sniff_csv) and its required columns (raw header name -> name used here)."""

    file: Path
    encoding: str
    sep: str
    decimal: str
    thousands: str | None
    names: dict


def _open_csv(path: str, *, setting: str, required: Sequence[str]) -> _Csv:
    """Check that the file exists and is a non-empty CSV with the required columns; say how to read it."""
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"{path}: file not found; set --{setting}=<your CSV> (columns {', '.join(required)})")
    if file.is_dir():
        raise InputError(f"{path}: is a folder, not a CSV file; set --{setting} to the CSV inside it")
    try:
        encoding, sep, decimal, header_line = _sniff_csv(file)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror}); check the file's permissions") from err
    if not header_line.strip():
        raise InputError(f"{path}: file is empty; expected a header line and one row per week, product and UF")
    thousands = "." if decimal == "," else ("," if sep != "," else None)
    names = _column_names(path, next(csv.reader([header_line], delimiter=sep)), required)
    return _Csv(file, encoding, sep, decimal, thousands, names)


def _parse_rows(
    df: pd.DataFrame,
    found: _Csv,
    path: str,
    *,
    date_column: str,
    id_columns: Sequence[str],
    numbers: Sequence[str],
    negative_ok: Sequence[str],
    first_row: int = 0,
) -> pd.DataFrame:
    """Rows of the file as read here: dates parsed, ids stripped (categoricals), numbers checked; first_row is the
    file row of df's first row, for the line numbers of errors."""
    out = pd.DataFrame({date_column: _parse_dates(_strip(df[date_column]), path, date_column, first_row)})
    for col in id_columns:
        ids = _strip(df[col])
        if (ids == "").any():
            raise InputError(f"{path}: column {col!r} is empty at {_rows(ids == '', first_row)}; fill in the id")
        out[col] = ids
    for col in numbers:
        out[col] = _parse_numbers(
            df[col],
            path=path,
            column=col,
            decimal=found.decimal,
            thousands=found.thousands,
            negative_ok=col in negative_ok,
            first_row=first_row,
        )
    return out


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
    numbers = (*target_columns, *control_columns)
    found = _open_csv(path, setting=setting, required=[date_column, *id_columns, *numbers])
    df = _read_columns(
        found.file,
        path,
        found.names,
        text_columns=(date_column, *id_columns),
        encoding=found.encoding,
        sep=found.sep,
        decimal=found.decimal,
    )
    out = _parse_rows(
        df, found, path, date_column=date_column, id_columns=id_columns, numbers=numbers, negative_ok=control_columns
    )
    logger.info(
        "Loaded %s: %d rows, %s to %s", path, len(out), out[date_column].min().date(), out[date_column].max().date()
    )
    return out


def estimated_rows(path: str) -> int:
    """Data rows of a CSV file estimated from its size and its first 64 KB (0 when there is no file)."""
    file = Path(path)
    if not file.is_file():
        return 0
    with file.open("rb") as f:
        head = f.read(65536)
    return round(file.stat().st_size * max(head.count(b"\n") - 1, 1) / max(len(head), 1))


@dataclass(frozen=True)
class SplitCsv:
    """A CSV's rows split by series into part files of binary records (all rows of a series in one part, in file
    order), to be read one part at a time; what split_sales_csv returns."""

    folder: Path
    parts: int
    date_column: str
    id_columns: tuple
    numbers: tuple
    dictionaries: dict  # id column -> pd.Index of its values (text), in order of appearance
    first_day: np.datetime64  # earliest and latest date of the whole file
    last_day: np.datetime64
    rows: int

    @functools.cached_property
    def _sorted(self) -> dict:
        """Id column -> (each dictionary code's rank in sorted order, the sorted values): once, not per part."""
        out = {}
        for col, values in self.dictionaries.items():
            order = values.argsort()
            rank = np.empty(len(order), np.int32)
            rank[order] = np.arange(len(order))
            out[col] = rank, values[order]
        return out

    def part(self, i: int) -> pd.DataFrame:
        """Part i as read_sales_csv returns rows (ids categorical, categories sorted), indexed by file row."""
        file, dtype = self.folder / f"{i}.bin", _record_dtype(len(self.id_columns), len(self.numbers))
        record = np.fromfile(file, dtype) if file.exists() else np.zeros(0, dtype)
        days = record["day"].astype(np.int64).astype("datetime64[D]")
        out = pd.DataFrame({self.date_column: days.astype("datetime64[ns]")}, index=record["row"])
        for j, col in enumerate(self.id_columns):
            rank, values = self._sorted[col]
            out[col] = pd.Categorical.from_codes(rank[record[f"id{j}"]], values)
        for k, col in enumerate(self.numbers):
            out[col] = record[f"x{k}"]
        return out


def _record_dtype(n_ids: int, n_numbers: int) -> np.dtype:
    """One CSV row in a part file: its file row, day (days since 1970-01-01), id codes and numbers."""
    ids = [(f"id{j}", "<i4") for j in range(n_ids)]
    return np.dtype([("row", "<i8"), ("day", "<i4"), *ids, *[(f"x{k}", "<f8") for k in range(n_numbers)]])


def split_sales_csv(
    path: str,
    *,
    parts: int,
    folder: Path,
    date_column: str,
    id_columns: Sequence[str],
    target_columns: Sequence[str],
    control_columns: Sequence[str] = (),
    setting: str = "DATA_PATH",
    dictionaries: dict | None = None,
    block_bytes: int = 1 << 26,
) -> SplitCsv:
    """read_sales_csv for a file too large to hold: the same checks and errors, reading block_bytes at a time and
    writing each row to one of `parts` part files in folder, chosen by a hash of its series' ids. Give the
    dictionaries of a split sales file when splitting its future file: a series then lands in the same part.

    Memory: one block and the id dictionaries, whatever the file's size.
    """
    numbers = (*target_columns, *control_columns)
    found = _open_csv(path, setting=setting, required=[date_column, *id_columns, *numbers])
    encoding, typed = found.encoding.replace("utf-8-sig", "utf8"), True  # pyarrow skips a BOM itself
    while True:  # numbers as floats in one pass; a block pyarrow cannot read restarts the file as text or latin-1
        try:
            return _split(
                found,
                path,
                parts=parts,
                folder=folder,
                date_column=date_column,
                id_columns=tuple(id_columns),
                numbers=numbers,
                negative_ok=tuple(control_columns),
                dictionaries=dict(dictionaries or {c: pd.Index([], dtype=object) for c in id_columns}),
                read=pa_csv.ReadOptions(encoding=encoding),
                block_bytes=block_bytes,
                number_type=pa.float64() if typed else pa.string(),
            )
        except pa.ArrowInvalid as err:
            if "UTF8" in str(err) and encoding != "latin-1":
                encoding = "latin-1"
            elif "conversion error" in str(err) and typed:
                typed = False  # thousands separators or typos: _parse_numbers repairs or reports them
            else:
                raise InputError(
                    f"{path}: not a readable CSV ({str(err).splitlines()[0]}); export it as CSV with ',' or ';' "
                    "separators"
                ) from err


def _blocks(file: Path, block_bytes: int) -> Iterator[bytes]:
    """The file as CSV blocks of about block_bytes: the header line, then whole lines.

    pyarrow.csv.open_csv (the twin) streams too, on one core: 3.4 s against 1.8 s for read_csv on these blocks with
    two cores, for 15.6 million rows (tests/benchmarks/bench_predict.py).
    """
    with file.open("rb") as f:
        header = f.readline()
        while block := f.read(block_bytes):
            yield header + block + f.readline()


def _split(
    found: _Csv,
    path: str,
    *,
    parts: int,
    folder: Path,
    date_column: str,
    id_columns: tuple,
    numbers: tuple,
    negative_ok: tuple,
    dictionaries: dict,
    read: pa_csv.ReadOptions,
    block_bytes: int,
    number_type: pa.DataType,
) -> SplitCsv:
    """One pass of split_sales_csv with the given reading options."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.bin"):
        old.unlink()
    text = pa.dictionary(pa.int32(), pa.string())
    convert = pa_csv.ConvertOptions(
        include_columns=list(found.names),
        column_types={raw: number_type if name in numbers else text for raw, name in found.names.items()},
        decimal_point=found.decimal,
    )
    dtype = _record_dtype(len(id_columns), len(numbers))
    rows, first_day, last_day = 0, np.iinfo(np.int64).max, np.iinfo(np.int64).min
    for block in _blocks(found.file, block_bytes):
        table = pa_csv.read_csv(pa.BufferReader(block), read, pa_csv.ParseOptions(delimiter=found.sep), convert)
        df = _parse_rows(
            table.to_pandas().rename(columns=found.names),
            found,
            path,
            date_column=date_column,
            id_columns=id_columns,
            numbers=numbers,
            negative_ok=negative_ok,
            first_row=rows,
        )
        record = np.empty(len(df), dtype)
        record["row"] = np.arange(rows, rows + len(df))
        day = df[date_column].to_numpy("datetime64[D]").astype(np.int64)
        record["day"] = day
        for j, col in enumerate(id_columns):
            values = df[col].array
            code = dictionaries[col].get_indexer(values.categories)
            new = code < 0
            code[new] = len(dictionaries[col]) + np.arange(new.sum())
            dictionaries[col] = dictionaries[col].append(values.categories[new])
            record[f"id{j}"] = code[values.codes]
        for k, col in enumerate(numbers):
            record[f"x{k}"] = df[col].to_numpy()
        ids = pd.DataFrame({col: record[f"id{j}"] for j, col in enumerate(id_columns)})
        part = (pd.util.hash_pandas_object(ids, index=False).to_numpy() % parts).astype(np.min_scalar_type(parts))
        order = np.argsort(part, kind="stable")  # a radix sort for 8- and 16-bit part numbers: 3x faster
        bounds = np.searchsorted(part[order], np.arange(parts + 1))
        for i in np.flatnonzero(np.diff(bounds)):
            with open(folder / f"{i}.bin", "ab") as f:
                record[order[bounds[i] : bounds[i + 1]]].tofile(f)
        rows += len(df)
        first_day, last_day = min(first_day, day.min()), max(last_day, day.max())
    if not rows:
        raise InputError(f"{path}: header only, no data rows; add at least one row per week, product and UF")
    first_day, last_day = np.datetime64(int(first_day), "D"), np.datetime64(int(last_day), "D")
    logger.info("Split %s into %d parts by series: %d rows, %s to %s", path, parts, rows, first_day, last_day)
    return SplitCsv(folder, parts, date_column, id_columns, numbers, dictionaries, first_day, last_day, rows)


class ForecastCsv:
    """previsoes.csv written one frame at a time (dates as YYYY-MM-DD, 4 decimals), swapped in only when complete.

    pyarrow's writer: 0.04 s against 0.20 s for DataFrame.to_csv on 2,000 series (float formatting); it quotes text.
    """

    def __init__(self, path: Path, *, date_column: str) -> None:
        self.path, self.date_column = path, date_column
        self._staging = path.with_name(path.name + ".tmp")
        self._writer: pa_csv.CSVWriter | None = None
        self._rows, self._weeks = 0, []

    def __enter__(self) -> "ForecastCsv":
        return self

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame.round(4), preserve_index=False)
        column = table.schema.get_field_index(self.date_column)
        table = table.set_column(column, self.date_column, table[self.date_column].cast(pa.date32()))
        if self._writer is None:
            self._writer = pa_csv.CSVWriter(self._staging, table.schema)
        self._writer.write_table(table)
        self._rows += len(frame)
        self._weeks += [frame[self.date_column].min(), frame[self.date_column].max()]

    def __exit__(self, error: type | None, *_) -> None:
        if self._writer is not None:
            self._writer.close()
        if error is not None or self._writer is None:
            self._staging.unlink(missing_ok=True)
            return
        self._staging.replace(self.path)
        logger.info(
            "Wrote %s: %d rows, weeks %s to %s",
            self.path,
            self._rows,
            min(self._weeks).date(),
            max(self._weeks).date(),
        )


def write_forecasts(frame: pd.DataFrame, path: Path, *, date_column: str) -> None:
    """previsoes.csv from one frame, atomically."""
    with ForecastCsv(path, date_column=date_column) as out:
        out.write(frame)
