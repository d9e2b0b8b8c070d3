"""A shop's five exports: customers, orders, payments, tickets and reviews (CSV, e-mail ids).

    python examples/five_tables/generate.py --customers 2000   # into the project's landing location

The labels are learnable from the declared features: a customer's tier follows what they paid,
next quarter's spend follows their order history and ratings.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COUNTRIES = ["de", "fr", "nl", "pl", "es", "it"]
START = pd.Timestamp("2025-01-01", tz="UTC")
TICKETS = ["Order {order} arrived damaged, please send a replacement. Reach me at {email}.",
           "I was charged twice for order {order}. My account is {email}.",
           "Please change the delivery address on my account ({email})."]
REVIEWS = ["Great quality, arrived fast. Rating {rating}/5.",
           "Not what I expected. {rating} stars.",
           "My friend {friend} recommended this shop and I agree: {rating}/5."]


def _stamp(days: np.ndarray) -> list[str]:
    return (START + pd.to_timedelta(days, unit="D")).strftime("%Y-%m-%dT%H:%M:%SZ").tolist()


def generate(n: int = 2000, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    emails = np.array([f"shopper.{i:06d}@shop.example" for i in range(n)], dtype=object)
    activity = rng.gamma(2.0, 1.2, n)
    basket = rng.lognormal(3.6, 0.35, n)
    satisfaction = rng.normal(0, 1, n)
    tenure = rng.integers(30, 700, n)

    n_orders = rng.poisson(activity * 3)
    owner = np.repeat(np.arange(n), n_orders)
    amount = (basket[owner] * rng.lognormal(0, 0.25, len(owner))).round(2)
    refunded = rng.random(len(owner)) < 0.08
    order_day = rng.integers(0, 640, len(owner))
    orders = pd.DataFrame({
        "order_id": [f"o-{i:07d}" for i in range(len(owner))], "customer_email": emails[owner], "ordered_at": _stamp(order_day),
        "amount": amount, "status": np.where(refunded, "refunded", "paid"),
    })
    paid = orders[orders["status"] == "paid"]
    prefers_invoice = rng.random(n) < 0.25
    method = np.where(prefers_invoice[owner[~refunded]], "invoice", rng.choice(["card", "paypal"], len(paid), p=[0.7, 0.3]))
    payments = pd.DataFrame({
        "payment_id": [f"p-{i:07d}" for i in range(len(paid))], "customer_email": paid["customer_email"].to_numpy(),
        "order_id": paid["order_id"].to_numpy(), "paid_at": _stamp(order_day[~refunded] + 1), "method": method,
        "amount": paid["amount"].to_numpy(),
    })

    n_reviews = rng.poisson(0.9, n)
    r_owner = np.repeat(np.arange(n), n_reviews)
    rating = np.clip(np.round(3.4 + satisfaction[r_owner] + rng.normal(0, 0.6, len(r_owner))), 1, 5).astype(int)
    friends = emails[rng.integers(0, n, len(r_owner))]
    template = rng.integers(0, len(REVIEWS), len(r_owner))
    reviews = pd.DataFrame({
        "review_id": [f"r-{i:07d}" for i in range(len(r_owner))], "customer_email": emails[r_owner],
        "posted_at": _stamp(rng.integers(0, 650, len(r_owner))), "rating": rating,
        "review_text": [REVIEWS[t].format(rating=r, friend=f) for t, r, f in zip(template, rating, friends, strict=True)],
        "publish_ok": np.where(rng.random(len(r_owner)) < 0.9, "yes", "no"),
    })

    n_tickets = rng.poisson(0.5 + 0.4 * (satisfaction < -0.5), n)
    t_owner = np.repeat(np.arange(n), n_tickets)
    tickets = pd.DataFrame({
        "ticket_id": [f"t-{i:07d}" for i in range(len(t_owner))], "customer_email": emails[t_owner],
        "created_at": _stamp(rng.integers(0, 650, len(t_owner))),
        "body": [TICKETS[int(rng.integers(0, len(TICKETS)))].format(order=f"o-{int(rng.integers(0, 10**7)):07d}", email=emails[o])
                 for o in t_owner],
    })

    spent = paid.groupby("customer_email")["amount"].sum().reindex(emails, fill_value=0.0).to_numpy()
    mean_rating = pd.Series(rating).groupby(r_owner).mean().reindex(range(n)).fillna(3.4).to_numpy()
    noisy = spent * rng.lognormal(0, 0.15, n)
    tier = np.select([noisy >= np.quantile(noisy, 0.8), noisy >= np.quantile(noisy, 0.45)], ["gold", "silver"], "bronze")
    next_spend = (0.22 * spent + 25 * (mean_rating - 3) + rng.normal(0, 20, n)).clip(0).round(2)
    churned = rng.random(n) < 1 / (1 + np.exp(1.0 + satisfaction + activity / 2))
    customers = pd.DataFrame({
        "customer_id": [f"c-{i:06d}" for i in range(n)], "email": emails, "country": rng.choice(COUNTRIES, n),
        "age": rng.integers(18, 80, n), "tenure_days": tenure, "lifetime_value": spent.round(2),
        "consent_ml": np.where(rng.random(n) < 0.92, "yes", "no"), "churned": np.where(churned, "yes", "no"),
        "tier": tier, "next_quarter_spend": next_spend,
    })
    return {"customers": customers, "orders": orders, "payments": payments, "tickets": tickets, "reviews": reviews}


if __name__ == "__main__":
    from erasure_pipeline.app.demo import example_main

    example_main(generate, __doc__)
