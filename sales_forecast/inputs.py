"""The data a run reads: the user's CSV and future file, read whole or in parts by series, or a synthetic panel."""

import logging
import math
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from sales_forecast.artifacts import check_output_dirs
from sales_forecast.distributed import is_main_process
from sales_forecast.sales_csv import InputError, estimated_rows, read_sales_csv, split_sales_csv
from sales_forecast.settings import DataSettings

logger = logging.getLogger(__name__)

SYNTHETIC_CONTROLS = ("preco", "promocao")  # the synthetic panel's driver columns


def synthesize_sales(
    *,
    seed: int,
    date_column: str,
    id_columns: Sequence[str],
    target_columns: Sequence[str],
    n_products: int = 8,
    ufs: Sequence[str] = ("SP", "RJ", "MG", "RS", "PR", "BA"),
    n_weeks: int = 260,
    future_weeks: int = 26,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A realistic weekly panel: trend, yearly season, promotions, a drifting price, new and intermittent series.

    Named as the settings ask: 1 id column (product-UF), 2 (product, UF) or 3 (product, UF, channel); targets in
    order units, revenue, then revenue x 0.3 (a margin) for any further target. Drivers: "preco" (the shelf price,
    20% off in promotion weeks) and "promocao" (1 in promotion weeks, which sell 1.8x). Returns the sales and the
    future file: the drivers planned for the `future_weeks` weeks after the last date, every series.
    """
    rng = np.random.default_rng(seed)
    dates = pd.date_range(end="2025-12-28", periods=n_weeks, freq="W-SUN").append(
        pd.date_range(start="2026-01-04", periods=future_weeks, freq="W-SUN")
    )
    week = np.arange(n_weeks + future_weeks)
    frames, futures = [], []
    for p in range(n_products):
        price0 = rng.uniform(5, 80)
        for u, uf in enumerate(ufs):
            level = rng.lognormal(3.5, 0.7) * (1.0 - 0.12 * u)
            season = 1 + rng.uniform(0.1, 0.4) * np.sin(2 * np.pi * (week + rng.integers(52)) / 52.18)
            christmas = 1 + 0.5 * (dates.isocalendar().week.to_numpy() >= 50)
            promo = rng.random(len(week)) < 0.07
            price = np.round(price0 * (1.0008 + rng.normal(0, 0.0004)) ** week * np.where(promo, 0.8, 1.0), 2)
            rate = level * (1 + rng.normal(0.002, 0.002) * week) * season * christmas * np.where(promo, 1.8, 1.0)
            if (p + u) % 13 == 5:  # intermittent: slow movers with many zero weeks
                rate = rate * 0.02
            units = rng.poisson(np.clip(rate, 0, None)).astype(float)
            start = n_weeks - rng.integers(40, 90) if (p * len(ufs) + u) % 17 == 3 else 0  # a few new launches
            ids = (
                [f"P{p + 1:03d}-{uf}"],
                [f"P{p + 1:03d}", uf],
                [f"P{p + 1:03d}", uf, ("loja", "online")[(p + u) % 2]],
            )
            key = dict(zip(id_columns, ids[len(id_columns) - 1]))
            revenue = np.round(units * price, 2)
            targets = [units, revenue] + [np.round(revenue * 0.3, 2)] * (len(target_columns) - 2)
            frame = pd.DataFrame(
                {date_column: dates, **key, **dict(zip(target_columns, targets)), "preco": price, "promocao": promo}
            ).astype({"promocao": float})
            frames.append(frame.iloc[start:n_weeks])
            futures.append(frame.iloc[n_weeks:].drop(columns=list(target_columns)))
    df = pd.concat(frames, ignore_index=True)
    keep = (df[target_columns[0]] > 0) | (rng.random(len(df)) < 0.5)  # exports often omit weeks without sales
    return df[keep].reset_index(drop=True), pd.concat(futures, ignore_index=True)


def load_sales(
    data: DataSettings, *, horizon: int, seed: int, synthetic_dir: Path | None
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The user's CSV and, with control columns, the future file; with synthetic_dir given and no file at
    DATA_PATH, a synthetic panel and its future file saved there for inspection (its drivers used when no controls
    are set)."""
    path, columns = data.data_path, data.columns
    if synthetic_dir is None or Path(path).exists():
        sales = read_sales_csv(path, **columns)
        future = None
        if data.control_columns:
            future = read_sales_csv(data.future_path, **columns | {"target_columns": ()}, setting="FUTURE_PATH")
        return sales, future
    names = {k: columns[k] for k in ("date_column", "id_columns", "target_columns")}
    sales, future = synthesize_sales(seed=seed, future_weeks=horizon, **names)
    controls = data.control_columns or SYNTHETIC_CONTROLS
    if set(controls) - set(SYNTHETIC_CONTROLS):
        raise InputError(
            f"CONTROL_COLUMNS={list(controls)}: the synthetic panel (no file at {path}) has only "
            f"{list(SYNTHETIC_CONTROLS)}; give your CSV with --DATA_PATH or use those"
        )
    sales = sales[[*sales.columns[: -len(SYNTHETIC_CONTROLS)], *controls]]
    future = future[[*future.columns[: -len(SYNTHETIC_CONTROLS)], *controls]]
    if is_main_process():
        sales.to_csv(synthetic_dir / "dados_sinteticos.csv", index=False)
        future.to_csv(synthetic_dir / "dados_sinteticos_futuro.csv", index=False)
    logger.warning(
        "SYNTHETIC DATA: %s not found, so training on a synthetic panel (%d rows, %d series, drivers %s), saved "
        "to %s with its future file. Put your CSV at %s or set --DATA_PATH.",
        path,
        len(sales),
        sales.groupby(list(names["id_columns"])).ngroups,
        ", ".join(controls),
        synthetic_dir / "dados_sinteticos.csv",
        path,
    )
    return sales, future


def predict_inputs(
    data: DataSettings, *, horizon: int, part_rows: int, work_dir: Path
) -> Iterator[tuple[pd.DataFrame, pd.DataFrame | None, tuple | None, str]]:
    """Predict mode's input, one part at a time: (sales rows, future rows or None, span, source) as weekly_panel
    takes them. A CSV of up to part_rows rows is one part; a larger one and its future file are split by series
    into work_dir (deleted after), so memory holds one part whatever the file's size."""
    data_path, future_path, columns = data.data_path, data.future_path, data.columns
    parts = math.ceil(estimated_rows(data_path) / part_rows)
    if parts <= 1:
        sales, future = load_sales(data, horizon=horizon, seed=0, synthetic_dir=None)
        yield sales, future, None, data_path
        return
    check_output_dirs([work_dir], Path(data_path).stat().st_size // 2**20 + 1)  # part files: less than the CSV
    with tempfile.TemporaryDirectory(prefix=".parts-", dir=work_dir) as tmp:
        sales = split_sales_csv(data_path, parts=parts, folder=Path(tmp) / "sales", **columns)
        future = None
        if data.control_columns:
            future = split_sales_csv(
                future_path,
                parts=parts,
                folder=Path(tmp) / "future",
                **columns | {"target_columns": ()},
                setting="FUTURE_PATH",
                dictionaries=sales.dictionaries,
            )
        for i in range(parts):
            rows, ahead = sales.part(i), None if future is None else future.part(i)
            if not len(rows) and ahead is not None and len(ahead):
                raise InputError(
                    f"{future_path}: {len(ahead)} row(s) with series that are not in the data, line(s) "
                    f"{', '.join(map(str, ahead.index[:5] + 2))}; fix or remove them"
                )
            if len(rows):
                yield rows, ahead, (sales.first_day, sales.last_day), f"{data_path} (part {i + 1} of {parts})"
