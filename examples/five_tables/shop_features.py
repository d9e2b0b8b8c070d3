"""A feature function named in policy.yaml (``shop_features:payment_mix``).

It receives the shard's rows of the datasets it declares (``datasets: [payments]``), each with a
``subject_key`` column, and returns one row per ``subject_key`` with the declared output columns.
It reads nothing else (no other shard, no clock, no randomness), so a shard's features stay a
function of that shard's rows, which is what lets SISA retrain one shard exactly.
"""

import pandas as pd


def payment_mix(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    payments = frames["payments"]
    if payments.empty:
        return pd.DataFrame(columns=["subject_key", "card_share", "invoice_share"])
    method = payments["method"].astype(str)
    mix = pd.DataFrame({"subject_key": payments["subject_key"], "card": method.eq("card"), "invoice": method.eq("invoice")})
    shares = mix.groupby("subject_key")[["card", "invoice"]].mean()
    return shares.rename(columns={"card": "card_share", "invoice": "invoice_share"}).reset_index()
