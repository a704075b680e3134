"""Where driver values come from: control columns of the data and the future file, and computed holiday flags."""

import dataclasses
import logging

import holidays
import numpy as np
import pandas as pd

from sales_forecast.panel import Driver, Panel, resample_weekly, series_index, week_end
from sales_forecast.sales_csv import InputError
from sales_forecast.settings import DataSettings

logger = logging.getLogger(__name__)

HOLIDAY = Driver("holiday_flag", computed=True)  # from HOLIDAY_COUNTRY, for history and future alike


def future_controls(panel: Panel, future: pd.DataFrame, *, horizon: int, date_column: str, path: str) -> np.ndarray:
    """(series, horizon, controls) from the future file: one row per series and week after the data's last week.

    Raises:
        InputError: naming the file, the series and weeks that are missing, unknown, outside or repeated.
    """
    anchor = pd.tseries.frequencies.to_offset(panel.dates.freqstr)
    ends = week_end(future[date_column].to_numpy("datetime64[D]").astype(np.int64), panel.dates.freqstr)
    last = panel.dates[-1].to_datetime64().astype("datetime64[D]").astype(np.int64)
    week = (ends - last) // 7 - 1
    lines = future.index.to_numpy() + 2  # file lines (a part of a split file keeps its file rows as index)
    series = series_index(panel.keys, future)
    weeks = f"the {horizon} weeks {panel.dates[-1] + anchor:%Y-%m-%d}..{panel.dates[-1] + horizon * anchor:%Y-%m-%d}"
    for bad, what in (
        (series < 0, "series that are not in the data"),
        ((week < 0) | (week >= horizon), f"dates outside {weeks}"),
    ):
        if bad.any():
            raise InputError(
                f"{path}: {bad.sum()} row(s) with {what}, line(s) {', '.join(map(str, lines[bad][:5]))} "
                f"(e.g. {future[bad].iloc[0][[date_column, *panel.keys.columns]].astype(str).to_dict()}); fix or "
                "remove them"
            )
    cell = series * horizon + week
    if len(np.unique(cell)) < len(cell):
        repeated = pd.Series(cell).duplicated().to_numpy()
        raise InputError(
            f"{path}: {repeated.sum()} repeated (series, week) row(s), line(s) "
            f"{', '.join(map(str, lines[repeated][:5]))}; keep one row per series and week"
        )
    have = np.zeros(len(panel.keys) * horizon, bool)
    have[cell] = True
    missing = ~have.reshape(len(panel.keys), horizon)
    if missing.any():
        first = np.flatnonzero(missing.any(1))[:5]
        dates = pd.date_range(panel.dates[-1] + anchor, periods=horizon, freq=anchor).strftime("%Y-%m-%d")
        examples = "; ".join(f"{panel.keys.iloc[s].to_dict()} weeks {list(dates[missing[s]][:3])}" for s in first)
        raise InputError(
            f"{path}: {missing.any(1).sum()} series lack rows for some of {weeks}: {examples}; "
            "give every series of the data a row for each of those weeks"
        )
    out = np.zeros((len(panel.keys) * horizon, len(panel.driver_specs)))
    out[cell] = future[list(panel.driver_names)].to_numpy(float)
    return out.reshape(len(panel.keys), horizon, -1)


def holiday_flags(keys: pd.DataFrame, dates: pd.DatetimeIndex, country: str) -> np.ndarray:
    """(series, weeks): 1 in weeks (ending on dates) with a public holiday of the country, from the holidays
    package; per state where an id column holds its state codes (UFs for BR), national otherwise."""
    try:
        national = holidays.country_holidays(country)
    except NotImplementedError as err:
        raise InputError(
            f"HOLIDAY_COUNTRY={country}: not a country the holidays package knows; use a code such as BR or US, "
            "or --HOLIDAY_COUNTRY= for no holiday flags"
        ) from err
    codes = {str(c).upper() for c in national.subdivisions}
    state = next((c for c in keys.columns if keys[c].astype(str).str.strip().str.upper().isin(codes).all()), None)
    regions = keys[state].astype(str).str.strip().str.upper() if state else pd.Series("", index=keys.index)
    logger.info("Holiday flags for %s: %s", country, f"per state from column {state!r}" if state else "national")
    years = range(dates[0].year - 1, dates[-1].year + 2)
    week_days = dates.to_numpy("datetime64[D]")[:, None] - np.arange(7)
    flags = np.zeros((len(keys), len(dates)))
    for region in regions.unique():
        days = holidays.country_holidays(country, subdiv=region or None, years=years)
        flags[(regions == region).to_numpy()] = np.isin(week_days, np.array(list(days), "datetime64[D]")).any(1)
    return flags


def add_drivers(
    panel: Panel,
    future: pd.DataFrame | None,
    *,
    horizon: int,
    holiday_country: str,
    categorical: tuple,
    date_column: str,
    future_path: str,
) -> Panel:
    """The panel with its drivers over the data's weeks and the `horizon` weeks after: control columns (future
    from the future file) and the holiday flag; plus the id columns read as categories."""
    controls = panel.drivers
    if controls.shape[2]:
        ahead = future_controls(panel, future, horizon=horizon, date_column=date_column, path=future_path)
        controls = np.concatenate([controls, ahead], axis=1)
    else:
        controls = np.zeros((len(panel.keys), len(panel.dates) + horizon, 0))
    specs = panel.driver_specs
    if holiday_country:
        dates = pd.date_range(panel.dates[0], periods=len(panel.dates) + horizon, freq=panel.dates.freq)
        controls = np.concatenate([controls, holiday_flags(panel.keys, dates, holiday_country)[..., None]], axis=2)
        specs = (*specs, HOLIDAY)
    if specs:
        logger.info(
            "Known-future drivers: %s; static categories: %s",
            ", ".join(driver.name for driver in specs),
            list(categorical) or "none",
        )
    return dataclasses.replace(panel, drivers=controls, driver_specs=specs, categorical=categorical)


def weekly_panel(
    sales: pd.DataFrame,
    future: pd.DataFrame | None,
    *,
    data: DataSettings,
    horizon: int,
    source: str,
    span: tuple[np.datetime64, np.datetime64] | None = None,
) -> tuple[Panel, str]:
    """Section 2 for training and predict: the weekly panel with its drivers (the control columns the future file
    has, the holiday flags of HOLIDAY_COUNTRY) and categories; returns it and the week anchor used.
    span: as resample_weekly takes it, for a part of a split file."""
    columns = data.columns
    columns["control_columns"] = () if future is None else tuple(future.columns[1 + len(data.id_columns) :])
    panel, anchor = resample_weekly(
        sales, **columns, anchor=data.week_anchor, source=source, span=span, gap_weeks=data.gap_weeks
    )
    panel = add_drivers(
        panel,
        future,
        horizon=horizon,
        holiday_country=data.holiday_country,
        categorical=data.categorical_columns,
        date_column=data.date_column,
        future_path=data.future_path,
    )
    return panel, anchor
