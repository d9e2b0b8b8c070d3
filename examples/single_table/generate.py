"""A churn table as a CRM exports it: one CSV, ids are e-mail addresses, the label is "Yes"/"No".

    python examples/single_table/generate.py --customers 2000   # into the project's landing location
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def generate(n: int = 2000, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    tenure = rng.integers(0, 72, n)
    contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.55, 0.25, 0.2])
    calls = rng.poisson(1.5, n)
    charges = rng.uniform(20, 120, n).round(2)
    risk = -1.0 - tenure / 18 + (contract == "month-to-month") * 1.4 + calls * 0.35 + (charges - 70) / 60
    churn = rng.random(n) < 1 / (1 + np.exp(-risk))
    return {"customers": pd.DataFrame({
        "customer_id": [f"c-{i:06d}" for i in range(n)],
        "email": [f"customer.{i:06d}@crm.example" for i in range(n)],
        "region": rng.choice(["north", "south", "east", "west"], n),
        "age": rng.integers(18, 80, n),
        "contract": contract,
        "tenure": tenure,
        "monthly_charges": charges,
        "support_calls": calls,
        "Churn": np.where(churn, "Yes", "No"),
    })}


if __name__ == "__main__":
    from erasure_pipeline.app.demo import example_main

    example_main(generate, __doc__)
