"""The gbm forecaster: fitted only on the weeks it is given, moved by its drivers, saved under the manifest."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import HORIZON, make_panel, run_args, settings_for

import ttm_model
from sales_forecast import gbm as gbm_module
from sales_forecast.forecast import blend
from sales_forecast.gbm import FITS, MIN_WEEKS, fit_gbm, gbm_forecast
from sales_forecast.panel import Driver, joined_ids, panel_until, resample_weekly
from sales_forecast.sales_csv import InputError

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")


def _promo_panel(n_weeks: int = 120, seed: int = 0):
    """A panel whose sales double in promotion weeks (one driver, known for HORIZON weeks after the data)."""
    panel, _ = resample_weekly(
        make_panel(n_weeks=n_weeks, seed=seed), date_column="date", id_columns=IDS, target_columns=TARGETS
    )
    rng = np.random.default_rng(seed)
    promo = (rng.random((len(panel.keys), n_weeks + HORIZON, 1)) < 0.3).astype(float)
    values = panel.values * (1 + promo[:, :n_weeks])
    return dataclasses.replace(panel, values=values, drivers=promo, driver_specs=(Driver("promo"),))


def test_gbm_reads_no_week_at_or_after_its_origin():
    panel = _promo_panel()
    end = 100
    spiked = dataclasses.replace(panel, values=panel.values.copy())
    spiked.values[:, end:] *= 1000
    forecasts = [
        gbm_forecast(fit_gbm(panel_until(p, end), trees=30, seed=0), panel_until(p, end), horizon=HORIZON)
        for p in (panel, spiked)
    ]
    assert np.isfinite(forecasts[0]).all()
    np.testing.assert_array_equal(forecasts[0], forecasts[1])


def test_a_promotion_in_the_future_file_moves_the_gbm_forecast():
    panel = _promo_panel()
    gbm = fit_gbm(panel, trees=100, seed=0)
    plans = []
    for flag in (0.0, 1.0):
        drivers = panel.drivers.copy()
        drivers[:, len(panel.dates) :] = flag
        plans.append(gbm_forecast(gbm, dataclasses.replace(panel, drivers=drivers), horizon=HORIZON))
    assert plans[1].sum() > 1.5 * plans[0].sum()  # sales double in promotion weeks


def test_a_promotion_in_the_future_file_moves_the_gbm_forecast_of_the_week_after_it():
    panel = _promo_panel()
    n_weeks = len(panel.dates)
    week_before = np.concatenate([np.zeros_like(panel.drivers[:, :1]), panel.drivers[:, :-1]], axis=1)[:, :n_weeks]
    base = panel.values / (1 + panel.drivers[:, :n_weeks])  # no lift in the promotion week itself: its sales do not
    dip = dataclasses.replace(panel, values=base * (1 - 0.6 * week_before))  # tell the next week it follows one
    gbm = fit_gbm(dip, trees=100, seed=0)
    plans = []
    for flag in (0.0, 1.0):  # a promotion in the first future week, or none; none in the second
        drivers = dip.drivers.copy()
        drivers[:, n_weeks:] = 0.0
        drivers[:, n_weeks] = flag
        plans.append(gbm_forecast(gbm, dataclasses.replace(dip, drivers=drivers), horizon=HORIZON))
    assert plans[1][:, 1].sum() < 0.75 * plans[0][:, 1].sum()  # the week after it: sales of its lag 1 driver


def test_the_gbm_frame_holds_each_driver_of_the_weeks_before_known_for_the_future_too():
    panel = _promo_panel(n_weeks=60)
    n_weeks, x = len(panel.dates), panel.drivers[..., 0]
    history = gbm_module._frame(panel, range(0, n_weeks), (1, 2))
    future = gbm_module._frame(panel, range(n_weeks, n_weeks + HORIZON), (1, 2))
    first = history[history["unique_id"] == 2]
    np.testing.assert_array_equal(first["x_0_lag1"].to_numpy()[1:], x[2, : n_weeks - 1])
    np.testing.assert_array_equal(first["x_0_lag2"].to_numpy()[2:], x[2, : n_weeks - 2])
    assert np.isnan(first["x_0_lag1"].iloc[0]) and np.isnan(first["x_0_lag2"].iloc[:2]).all()
    np.testing.assert_array_equal(first["y_1"], panel.values[2, :, 1])
    ahead = future[future["unique_id"] == 2]
    np.testing.assert_array_equal(ahead["x_0_lag1"], x[2, n_weeks - 1 : -1])  # the last weeks of data, then the plan
    np.testing.assert_array_equal(ahead["x_0_lag2"], x[2, n_weeks - 2 : -2])
    assert len(ahead) == HORIZON and not any(c.startswith("y_") for c in future.columns)


def test_the_gbm_forecast_from_the_last_year_of_weeks_equals_mlforecast_reading_every_week():
    panel = _promo_panel(n_weeks=90)
    n_weeks, gbm = len(panel.dates), fit_gbm(panel, trees=30, seed=0)
    history = gbm_module._frame(panel, range(0, n_weeks), gbm.driver_lags)
    future = gbm_module._frame(panel, range(n_weeks, n_weeks + HORIZON), gbm.driver_lags)
    forecast = gbm_forecast(gbm, panel, horizon=HORIZON)
    for c, forecaster in enumerate(gbm.forecasters):
        every_week = forecaster.predict(HORIZON, new_df=history.drop(columns=f"y_{1 - c}"), X_df=future)
        mean = every_week[list(forecaster.models)].mean(axis=1).to_numpy().reshape(len(panel.keys), HORIZON)
        np.testing.assert_array_equal(forecast[..., c], np.clip(mean, 0, None))


def test_a_panel_over_gbm_max_rows_fits_the_gbm_on_a_sample_of_its_long_series(caplog):
    panel = _promo_panel(n_weeks=80)
    panel = dataclasses.replace(panel, start=np.where(np.arange(len(panel.keys)) % 3 == 0, 40, panel.start))
    weeks = len(panel.dates) - panel.start
    with caplog.at_level("INFO", logger="sales_forecast.gbm"):
        sample = gbm_module._sample_series(panel, max_rows=200, seed=0)
    kept = joined_ids(sample.keys, IDS).isin(joined_ids(panel.keys, IDS)[weeks > MIN_WEEKS])
    assert 0 < len(sample.keys) < (weeks > MIN_WEEKS).sum() and kept.all()
    assert (len(sample.dates) - sample.start).sum() <= 200 and "learns from" in caplog.text
    assert gbm_module._sample_series(panel, max_rows=weeks.sum(), seed=0) is panel
    full, sampled = (fit_gbm(panel, trees=30, seed=0, max_rows=rows) for rows in (0, 200))
    forecasts = [gbm_forecast(g, panel, horizon=HORIZON) for g in (full, sampled)]
    assert np.isfinite(forecasts[1][weeks >= MIN_WEEKS]).all()  # every long series forecast, sampled or not
    assert np.abs(forecasts[0] - forecasts[1])[weeks >= MIN_WEEKS].max() > 0


def test_a_gbm_of_an_earlier_version_without_driver_lags_still_forecasts(monkeypatch):
    panel = _promo_panel()
    monkeypatch.setattr(gbm_module, "DRIVER_LAGS", ())
    earlier = fit_gbm(panel, trees=30, seed=0)
    expected = gbm_forecast(earlier, panel, horizon=HORIZON)
    monkeypatch.undo()
    del earlier.driver_lags  # unpickled from a gbm.joblib written before the field existed
    np.testing.assert_array_equal(gbm_forecast(earlier, panel, horizon=HORIZON), expected)
    assert fit_gbm(panel, trees=30, seed=0).driver_lags == gbm_module.DRIVER_LAGS == (1, 2)


def test_the_gbm_forecast_is_the_mean_of_fits_that_differ_in_their_loss_and_seed(monkeypatch):
    panel = _promo_panel()
    averaged = gbm_forecast(fit_gbm(panel, trees=30, seed=3), panel, horizon=HORIZON)
    single = []
    for k, objective in enumerate(FITS):
        monkeypatch.setattr(gbm_module, "FITS", (objective,))
        single.append(gbm_forecast(fit_gbm(panel, trees=30, seed=3 + k), panel, horizon=HORIZON))
    assert set(FITS) == {"l1", "huber"}
    assert np.abs(single[0] - single[2]).max() > 0  # the subsampling seeds make different fits
    other = ({"l1", "huber"} - {FITS[1]}).pop()
    monkeypatch.setattr(gbm_module, "FITS", (other,))
    other_loss = gbm_forecast(fit_gbm(panel, trees=30, seed=4), panel, horizon=HORIZON)
    assert np.abs(single[1] - other_loss).max() > 0  # the loss matters: not the other loss's fit of the same seed
    np.testing.assert_allclose(averaged, np.mean(single, axis=0), rtol=1e-9)


def test_targets_fitted_and_forecast_side_by_side_forecast_as_each_target_alone_on_every_core(monkeypatch):
    monkeypatch.setattr(gbm_module.torch, "get_num_threads", lambda: 4)  # side by side 2 threads per fit, alone 4
    panel = _promo_panel()
    both = gbm_forecast(fit_gbm(panel, trees=30, seed=3), panel, horizon=HORIZON)
    for c, target in enumerate(TARGETS):
        alone = dataclasses.replace(panel, values=panel.values[..., [c]], targets=(target,))
        np.testing.assert_array_equal(
            gbm_forecast(fit_gbm(alone, trees=30, seed=3), alone, horizon=HORIZON)[..., 0], both[..., c]
        )


def test_series_too_short_for_the_gbm_take_the_ttm_forecast_in_every_blend(caplog):
    panel = _promo_panel()
    start = panel.start.copy()
    start[0] = len(panel.dates) - MIN_WEEKS + 1  # fewer weeks than the longest lag
    values = panel.values.copy()
    values[0, : start[0]] = 0
    short = dataclasses.replace(panel, start=start, values=values)
    with caplog.at_level("INFO", logger="sales_forecast.gbm"):
        forecast = gbm_forecast(fit_gbm(short, trees=30, seed=0), short, horizon=HORIZON)
    assert np.isnan(forecast[0]).all() and np.isfinite(forecast[1:]).all()
    assert f"GBM: {len(panel.keys) - 1} series x {HORIZON} weeks forecast in" in caplog.text
    ttm = {"fine_tuned": np.full_like(forecast, 7.0), "zero_shot": np.full_like(forecast, 5.0), "gbm": forecast}
    np.testing.assert_array_equal(blend(ttm, "gbm+fine_tuned")[0], 7.0)
    np.testing.assert_array_equal(blend(ttm, "0.8*gbm+0.2*fine_tuned+0.0*zero_shot")[0], 7.0)
    np.testing.assert_array_equal(blend(ttm, "gbm")[0], 5.0)  # gbm alone: the zero-shot forecast
    np.testing.assert_allclose(blend(ttm, "0.8*gbm+0.2*fine_tuned")[1:], 0.8 * forecast[1:] + 1.4)


def test_no_series_long_enough_gives_no_gbm_and_nan_forecasts():
    panel = _promo_panel(n_weeks=MIN_WEEKS)
    assert fit_gbm(panel, trees=10, seed=0) is None
    assert np.isnan(gbm_forecast(None, panel, horizon=HORIZON)).all()


@pytest.fixture(scope="module")
def gbm_run(tmp_path_factory, model_dir):
    """A short training run that forecasts with a fitted gbm blend."""
    tmp = tmp_path_factory.mktemp("gbm_run")
    data = tmp / "vendas.csv"
    make_panel(n_weeks=110).to_csv(data, index=False)
    metrics = ttm_model.main(run_args(tmp, model_dir, data, "--FORECAST_METHOD=gbm+fine_tuned@fitted"))
    return tmp, data, metrics


def test_predict_mode_reproduces_a_gbm_blend_and_the_manifest_covers_the_gbm(gbm_run, tmp_path):
    tmp, data, metrics = gbm_run
    final = tmp / "final"
    selection = json.loads((final / "settings.json").read_text())["SELECTION"]
    assert all(method.endswith("*fine_tuned") and "*gbm+" in method for method in selection.values())
    assert metrics["selection"]["vendas"]["candidate"] == "gbm+fine_tuned@fitted"
    assert "gbm.joblib" in json.loads((final / "manifest.json").read_text())["sha256"]
    out = tmp_path / "pred"
    ttm_model.main(["--MODE=predict", f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={final}", f"--RESULTS_DIR={out}"])
    pd.testing.assert_frame_equal(pd.read_csv(out / "previsoes.csv"), pd.read_csv(tmp / "results" / "previsoes.csv"))
    with open(final / "gbm.joblib", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(SystemExit):
        ttm_model.main(["--MODE=predict", f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={final}", f"--RESULTS_DIR={out}"])


def test_predict_refuses_a_gbm_method_the_folder_has_no_gbm_for(trained_without_gbm, tmp_path):
    final, data = trained_without_gbm
    argv = ["--MODE=predict", f"--DATA_PATH={data}", f"--FINAL_MODEL_DIR={final}", f"--RESULTS_DIR={tmp_path}"]
    with pytest.raises(InputError, match="needs the gbm, which that training run did not save"):
        ttm_model.run_predict(settings_for([*argv, "--FORECAST_METHOD=0.5*gbm+0.5*zero_shot"]), warnings=[])


@pytest.fixture(scope="module")
def trained_without_gbm(gbm_run, tmp_path_factory):
    """The gbm run's folder without its gbm (as a run that did not select it writes it)."""
    tmp, data, _ = gbm_run
    final = tmp_path_factory.mktemp("no_gbm") / "final"
    shutil.copytree(tmp / "final", final)
    (final / "gbm.joblib").unlink()
    manifest = json.loads((final / "manifest.json").read_text())
    del manifest["sha256"]["gbm.joblib"]
    (final / "manifest.json").write_text(json.dumps(manifest))
    return final, data
