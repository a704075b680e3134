"""The LightGBM peer of issue 22 on a folder kept by cutoff_check.py: its forecast, to score like the run's.

    python ../shared/tools/cutoff_check.py --data ../shared/data/dunnhumby_frat/weekly_cov.csv \
        --controls promo_encarte,promo_display,promo_tpr,desconto,preco_base --keep /tmp/cut -- ...
    python tests/benchmarks/bench_peer.py /tmp/cut --controls promo_encarte,promo_display,promo_tpr,desconto,preco_base
    python ../shared/tools/cutoff_check.py --data ../shared/data/dunnhumby_frat/weekly_cov.csv \
        --score-only /tmp/cut/peer

The recipe a data scientist would write in two seconds (DEVELOPERS.md): mlforecast + LightGBM, target log1p
(GlobalSklearnTransformer), lags 1..52, the drivers as dynamic features (from futuro.csv at predict time), 500
trees, learning rate 0.05, 31 leaves, min_child_samples 20, row and column subsampling 0.8, one model per target.
It reads DIR/historico.csv (and DIR/futuro.csv with --controls) and writes DIR/peer/results/previsoes.csv.
Weeks without a row inside a series are 0 (mlforecast refuses gaps; the run reads them as 0 too).
mlforecast leaves out series shorter than its lags; series that end before the file's last week are fitted on
but not forecast (cutoff_check scores only series still sold at the end). Not collected by pytest.
"""

import argparse
import logging
import time
import warnings
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
from mlforecast import MLForecast
from mlforecast.target_transforms import GlobalSklearnTransformer
from sklearn.preprocessing import FunctionTransformer
from utilsforecast.preprocessing import fill_gaps

logger = logging.getLogger("bench_peer")


def peer_forecast(history: pd.DataFrame, future: pd.DataFrame | None, *, target: str, controls: list, horizon: int):
    """unique_id, ds and the peer's forecast of one target for the series still sold at history's last week."""
    freq = pd.infer_freq(np.sort(history["ds"].unique())[-8:])
    frame = history[["unique_id", "ds", target, *controls]].rename(columns={target: "y"}).dropna(subset=["y"])
    frame = fill_gaps(frame, freq=freq, end="per_serie").fillna(0)  # mlforecast refuses missing weeks inside a series
    model = lightgbm.LGBMRegressor(
        n_estimators=500,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=20,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        verbosity=-1,
    )
    forecaster = MLForecast(
        models={target: model},
        freq=freq,
        lags=list(range(1, 53)),
        target_transforms=[GlobalSklearnTransformer(FunctionTransformer(np.log1p, np.expm1))],
    )
    last = frame.groupby("unique_id")["ds"].max()
    current = last.index[last == last.max()]
    known = None if future is None else future[future["unique_id"].isin(current)][["unique_id", "ds", *controls]]
    with warnings.catch_warnings():  # series shorter than the lags: left out of the fit, NaN lags when forecast
        warnings.filterwarnings("ignore", message=".*series were dropped completely|Found null values in lag")
        forecaster.fit(frame, static_features=[])
        return forecaster.predict(horizon, X_df=known, ids=list(current))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a folder kept by cutoff_check.py --keep")
    parser.add_argument("--controls", default="", help="driver columns, as given to cutoff_check.py")
    parser.add_argument("--ids", default="produto_cat,uf_cat")
    parser.add_argument("--targets", default="vendas,faturamento")
    parser.add_argument("--horizon", type=int, default=26)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ids, controls = args.ids.split(","), [c for c in args.controls.split(",") if c]

    def read(name: str) -> pd.DataFrame:
        frame = pd.read_csv(args.folder / name, parse_dates=["date"]).rename(columns={"date": "ds"})
        return frame.assign(unique_id=frame[ids].astype(str).agg("|".join, axis=1))

    history, future = read("historico.csv"), read("futuro.csv") if controls else None
    started, forecast = time.perf_counter(), None
    for target in args.targets.split(","):
        part = peer_forecast(history, future, target=target, controls=controls, horizon=args.horizon)
        forecast = part if forecast is None else forecast.merge(part, on=["unique_id", "ds"])
    seconds = time.perf_counter() - started
    keys = history.drop_duplicates("unique_id").set_index("unique_id")[ids]
    out = forecast.join(keys, on="unique_id").rename(columns={"ds": "date"})
    path = args.folder / "peer" / "results" / "previsoes.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    out[[*ids, "date", *args.targets.split(",")]].to_csv(path, index=False, date_format="%Y-%m-%d")
    logger.info("Peer: %d series forecast in %.1f s; wrote %s", out["unique_id"].nunique(), seconds, path)


if __name__ == "__main__":
    main()
