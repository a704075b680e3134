"""Weekly sales forecasting with IBM's TinyTimeMixer: the modules that `ttm_model.py` runs, one job each.

settings (typed settings per concern), sales_csv (CSV in and out), inputs (the data of a run), panel (weekly
resampling), drivers (known-future inputs), scaling (how values enter the model), windows (origins, splits,
windows), model (TTM loaded and adapted), gbm (the LightGBM forecaster), distributed (processes and devices),
training (the HF Trainer), forecast (forecasts by method, as rows), intervals (conformal bounds and their scores),
evaluation (metrics, baselines, plots), selection (backtest scores, choice, intervals),
totals (sums per level and their intervals), report (the report page), artifacts (the model folder).
Nothing here imports ttm_model.
"""
