"""The data of a run: the synthetic panel honours the column settings and carries drivers with a lift."""

import pandas as pd
import pytest

from sales_forecast.inputs import synthesize_sales

IDS, TARGETS = ("produto_cat", "uf_cat"), ("vendas", "faturamento")


@pytest.mark.parametrize(
    "ids, targets",
    [(("sku",), ("receita",)), (("loja", "sku", "canal"), ("vendas", "faturamento", "margem"))],
)
def test_synthetic_panel_honours_column_settings(ids, targets):
    df, future = synthesize_sales(
        seed=0, date_column="semana", id_columns=ids, target_columns=targets, n_products=2, ufs=("SP", "RJ")
    )
    assert list(df.columns) == ["semana", *ids, *targets, "preco", "promocao"]
    assert list(future.columns) == ["semana", *ids, "preco", "promocao"] and len(future) == 4 * 26
    assert df.groupby(list(ids)).ngroups == 4 and (df[list(targets)] >= 0).all().all()
    assert df[targets[0]].sum() > 0 and pd.api.types.is_datetime64_any_dtype(df["semana"])


def test_synthetic_panel_has_drivers_with_a_lift_and_a_future_file():
    sales, future = synthesize_sales(seed=0, date_column="date", id_columns=IDS, target_columns=TARGETS)
    assert {"preco", "promocao"} <= set(sales.columns)
    per_series = sales.groupby(list(IDS))
    lift = per_series["vendas"].transform("mean")
    ratio = (sales["vendas"] / lift)[sales["promocao"] == 1].groupby([sales[c] for c in IDS]).mean()
    assert ratio.median() > 1.4
    assert len(future) == per_series.ngroups * 26 and future["date"].min() > sales["date"].max()
