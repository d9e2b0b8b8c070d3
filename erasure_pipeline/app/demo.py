"""A realistic, reproducible synthetic data set for the landing location.

Subjects of a consumer/SMB business (emails as subject ids, names, phones, regions,
segments, consent flags), marketing engagement events as a campaign platform exports them,
and support tickets whose free text carries names, emails and phone numbers.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from erasure_pipeline.core.graph import Graph
from erasure_pipeline.core.policy import Policy, parse_policy, policy_path
from erasure_pipeline.core.settings import Settings
from erasure_pipeline.kinds.registry import graph_for
from erasure_pipeline.stores.factory import lake_at
from erasure_pipeline.stores.lake import Lake, table_to_bytes

FIRST = ["Ava", "Noah", "Mia", "Liam", "Zoe", "Omar", "Lena", "Ivan", "Sara", "Yuki", "Ana", "Tom", "Ines", "Jan",
         "Priya", "Kofi", "Elif", "Mateo", "Chloe", "Ravi", "Hana", "Luca", "Nora", "Aditi", "Finn", "Maya"]
LAST = ["Smith", "Garcia", "Novak", "Kowalski", "Rossi", "Dubois", "Muller", "Silva", "Tanaka", "Okafor", "Jensen",
        "Ahmed", "Larsen", "Moreau", "Costa", "Berg", "Kaya", "Ivanova", "Patel", "Nguyen", "Fischer", "Murphy"]
DOMAINS = ["example.com", "mail.example.org", "inbox.example.net", "post.example.eu"]
REGIONS = ["uk", "eu-west", "eu-north", "eu-south", "us-east", "us-west", "apac"]
SEGMENTS = ["consumer", "smb", "enterprise"]
EVENT_TYPES = ["email_sent", "email_open", "email_click", "web_visit", "purchase", "unsubscribe"]
CAMPAIGNS = [f"cmp-2026-{i:03d}" for i in range(1, 41)]
TICKET_TEMPLATES = [
    "Hi, this is {name}. I can't log in with {email} since the last update. Please call me on {phone}.",
    "Hello support, my invoice for last month is wrong. Account email {email}. Thanks, {name}",
    "{name} here. Please stop sending campaign emails to {email}; I already unsubscribed twice.",
    "My order never arrived. You can reach me at {phone} or {email}. Regards, {name}.",
    "Could you update my phone number to {phone}? The account is under {name} ({email}).",
    "I was charged twice for my subscription. Name: {name}. Email: {email}. Please refund one payment.",
    "The mobile app crashes when I open my profile. Tested on two phones. Contact {email}. {name}",
    "Please delete my payment card from the account {email}. Call {phone} if you need to verify. {name}",
]
DEMO_POLICY = Path(__file__).with_name("demo_policy.yaml")
"""The demo's declaration: the only place its datasets, cohorts, features and model are written down."""
START = pd.Timestamp("2024-01-01", tz="UTC")
END = pd.Timestamp("2026-11-01", tz="UTC")


def generate(n_subjects: int, seed: int = 7, events_per_subject: float = 10.0, tickets_per_subject: float = 0.5) -> dict[str, pd.DataFrame]:
    """Three landing tables: ``subjects``, ``events``, ``tickets`` (one random stream, in that order)."""
    if n_subjects < 1:
        raise ValueError("--subjects must be at least 1")
    rng = np.random.default_rng(seed)
    subjects, engagement, signup = _subjects(rng, n_subjects)
    events = _events(rng, subjects, engagement, signup, events_per_subject)
    tickets = _tickets(rng, subjects, signup, tickets_per_subject)
    return {"subjects": subjects, "events": events, "tickets": tickets}


def subject_ids(n_subjects: int, seed: int = 7) -> list[str]:
    """The ids ``generate(n_subjects, seed)`` gives its subjects, without generating the rest (a benchmark
    erasing subjects of a home it did not build)."""
    return _names(np.random.default_rng(seed), n_subjects)[2]


def _names(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """First names, last names and ids (e-mail addresses): the stream's first draws."""
    first = rng.choice(FIRST, n)
    last = rng.choice(LAST, n)
    domain = rng.choice(DOMAINS, n)
    return first, last, [f"{f.lower()}.{l.lower()}.{i}@{d}" for f, l, i, d in zip(first, last, np.arange(n), domain)]


def _subjects(rng: np.random.Generator, n: int) -> tuple[pd.DataFrame, np.ndarray, pd.DatetimeIndex]:
    first, last, emails = _names(rng, n)
    phones = [f"+44 7700 {900000 + int(x):06d}"[:16] for x in rng.integers(0, 99999, n)]
    region = rng.choice(REGIONS, n, p=[0.2, 0.2, 0.1, 0.1, 0.2, 0.1, 0.1])
    segment = rng.choice(SEGMENTS, n, p=[0.6, 0.3, 0.1])
    age = np.clip(rng.normal(41, 13, n).round(), 18, 90).astype(int)
    signup = START + pd.to_timedelta(rng.integers(0, (END - START).days, n), unit="D")
    tenure = (END - signup).days.to_numpy()
    engagement = rng.gamma(2.0, 0.5, n)
    value = np.round(rng.lognormal(4.0 + 0.6 * (segment == "enterprise") + 0.3 * (segment == "smb"), 0.8, n), 2)
    logit = -2.2 + 1.1 * engagement + 0.4 * (segment != "consumer") + 0.002 * tenure - 0.01 * (age - 40)
    converted = rng.random(n) < 1 / (1 + np.exp(-logit))
    subjects = pd.DataFrame({
        "subject_id": emails, "full_name": [f"{f} {l}" for f, l in zip(first, last)], "phone": phones, "region": region,
        "segment": segment, "age": age, "signup_date": signup.strftime("%Y-%m-%d"), "tenure_days": tenure, "lifetime_value": value,
        "converted": converted, "consent_training": rng.random(n) < 0.85,
    })
    return subjects, engagement, signup


def _events(rng: np.random.Generator, subjects: pd.DataFrame, engagement: np.ndarray, signup: pd.DatetimeIndex,
            per_subject: float) -> pd.DataFrame:
    """Marketing engagement events as a campaign platform exports them; buyers purchase more."""
    n, tenure, converted = len(subjects), subjects["tenure_days"].to_numpy(), subjects["converted"].to_numpy()
    owner = np.repeat(np.arange(n), rng.poisson(per_subject * (0.4 + engagement / 2), n))
    m = len(owner)
    eng = engagement[owner]
    p_types = np.stack([
        np.full(m, 0.45), 0.18 + 0.05 * eng, 0.04 + 0.04 * eng, 0.2 + 0.03 * eng,
        0.01 + 0.03 * eng * converted[owner], np.full(m, 0.01),
    ], axis=1)
    p_types /= p_types.sum(axis=1, keepdims=True)
    choice = (rng.random(m)[:, None] < p_types.cumsum(axis=1)).argmax(axis=1)
    ts = signup[owner] + pd.to_timedelta(rng.integers(0, 86400, m), unit="s") + pd.to_timedelta(
        (rng.random(m) * np.maximum(tenure[owner], 1)).astype(int), unit="D")
    return pd.DataFrame({
        "event_id": [f"ev-{i:09d}" for i in range(m)],
        "subject_id": subjects["subject_id"].to_numpy(dtype=object)[owner],
        "ts": ts,
        "event_type": np.asarray(EVENT_TYPES)[choice],
        "campaign_id": rng.choice(CAMPAIGNS, m),
        "channel": rng.choice(["email", "web", "app"], m, p=[0.7, 0.2, 0.1]),
    }).sort_values("ts", kind="stable").reset_index(drop=True)


def _tickets(rng: np.random.Generator, subjects: pd.DataFrame, signup: pd.DatetimeIndex, per_subject: float) -> pd.DataFrame:
    """Support tickets whose free text carries the subject's name, e-mail and phone number."""
    emails = subjects["subject_id"].to_numpy(dtype=object)
    owner = np.repeat(np.arange(len(subjects)), rng.poisson(per_subject, len(subjects)))
    texts = []
    for o in owner:
        template = TICKET_TEMPLATES[int(rng.integers(0, len(TICKET_TEMPLATES)))]
        texts.append(template.format(name=subjects.at[o, "full_name"], email=emails[o], phone=subjects.at[o, "phone"]))
    return pd.DataFrame({
        "ticket_id": [f"tk-{i:08d}" for i in range(len(owner))],
        "subject_id": emails[owner],
        "created_at": (signup[owner] + pd.to_timedelta(rng.integers(0, 600, len(owner)), unit="D")).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "channel": rng.choice(["email", "chat", "phone"], len(owner)),
        "text": texts,
    })


def write_landing(landing: Lake, tables: dict[str, pd.DataFrame], batch: str = "demo", subjects_per_file: int | None = None,
                  subject_column: str = "subject_id") -> list[str]:
    """Subjects and tickets as CSV, events as Parquet (both formats are part of the contract).

    ``subjects_per_file``: split every table into exports of that many subjects each (``events/demo-003.parquet``
    holds the events of the fourth block of subjects), as a source exporting by customer batch does."""
    written = []
    order = None
    if subjects_per_file:
        first = next(iter(tables.values()))
        order = {sid: i // subjects_per_file for i, sid in enumerate(first[subject_column])}
    for table, df in tables.items():
        parts = [(f"{batch}", df)] if order is None else [
            (f"{batch}-{int(n):03d}", g) for n, g in df.groupby(df[subject_column].map(order), sort=True)]
        for stem, part in parts:
            if table == "events":
                name, data = f"events/{stem}.parquet", table_to_bytes(part.reset_index(drop=True))
            else:
                buf = io.StringIO()
                part.to_csv(buf, index=False)
                name, data = f"{table}/{stem}.csv", buf.getvalue().encode()
            landing.write_bytes(name, data)
            written.append(name)
    return written


def land(tables: dict[str, pd.DataFrame], batch: str = "demo", settings: Settings | None = None) -> str:
    """Write ``tables`` into the project's landing location; a line saying what was written where."""
    landing = lake_at((settings or Settings.from_environ()).landing)
    names = write_landing(landing, tables, batch)
    return (f"landing: wrote {', '.join(f'{k}={len(v)}' for k, v in tables.items())} rows to {landing.describe()} "
            f"({len(names)} files)")


def example_main(generate, doc: str) -> None:
    """The command line of an example's generator: ``--customers N --seed S`` into the project's landing."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(land(generate(args.customers, args.seed), batch="export-2026-11"))


def demo_policy(**overrides) -> Policy:
    """The demo's declaration, with top-level fields replaced (``demo_policy(shards=4)``)."""
    return parse_policy({**yaml.safe_load(DEMO_POLICY.read_text()), **overrides}, source=str(DEMO_POLICY))


def demo_graph(**overrides) -> Graph:
    """The demo's shape: the demo declaration's graph."""
    return graph_for(demo_policy(**overrides))


def ensure_policy(settings: Settings) -> tuple[Path, bool]:
    """(the policy file in effect, whether it was just written): where no policy file is found, the demo's
    declaration is written to ``<project home>/policy.yaml``, so every later command finds it."""
    path, _named = policy_path(settings)
    if path is not None:
        return path, False
    target = settings.home / "policy.yaml"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(DEMO_POLICY.read_text())
    return target, True
