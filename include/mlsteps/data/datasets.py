"""The built-in dataset: synthetic customer churn with controllable covariate and concept drift.

One row is a customer at one point in time (``event_time``); ``churned`` says whether they left within the next
30 days. Features interact (monthly contracts with many support calls churn most), some have missing values, and
about one customer in six churns, so the task is neither trivial nor hopeless. The columns match
``include/config/datasets/churn.yaml``.

``covariate_drift`` (0 = none, 1 = strong) moves the feature distributions: shorter tenure, higher bills, more
support calls, a plan and contract mix that leans to cheap monthly plans. ``concept_drift`` (0..1) blends in a
different relationship between features and churn, so a model trained before the drift loses accuracy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PLANS = ["basic", "standard", "premium", "enterprise"]
REGIONS = ["north", "south", "east", "west", "central"]
PAYMENT_METHODS = ["card", "bank_transfer", "paypal", "invoice"]
CONTRACTS = ["monthly", "annual", "two_year"]
CHANNELS = ["organic", "paid_search", "referral", "partner", "social"]


def _mix(base: list[float], drifted: list[float], weight: float) -> np.ndarray:
    """Category probabilities moved from ``base`` towards ``drifted`` by ``weight`` (clipped to 0..1)."""
    weight = min(max(weight, 0.0), 1.0)
    probs = (1 - weight) * np.asarray(base) + weight * np.asarray(drifted)
    return probs / probs.sum()


def _with_nulls(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    values = values.astype(float)
    values[rng.random(values.shape[0]) < share] = np.nan
    return values


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_churn(
    rows: int,
    seed: int = 0,
    start: str = "2025-01-01",
    days: int = 365,
    covariate_drift: float = 0.0,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Generate the churn dataset.

    Args:
        rows: number of rows.
        seed: random seed; the same arguments give the same rows.
        start: first day of ``event_time`` (UTC).
        days: ``event_time`` is spread uniformly over this many days after ``start``.
        covariate_drift: 0 for the reference distribution, up to 1 (or more) for strong feature drift.
        concept_drift: 0 for the reference relationship, 1 for a fully different one.

    Returns:
        A DataFrame with ``customer_id``, ``event_time``, 16 features and ``churned`` (0/1), sorted by time.
    """
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")
    rng = np.random.default_rng(seed)
    drift = covariate_drift

    contract = rng.choice(CONTRACTS, rows, p=_mix([0.5, 0.32, 0.18], [0.8, 0.15, 0.05], drift))
    plan = rng.choice(PLANS, rows, p=_mix([0.38, 0.34, 0.22, 0.06], [0.6, 0.25, 0.12, 0.03], drift))
    region = rng.choice(REGIONS, rows, p=_mix([0.22, 0.2, 0.2, 0.23, 0.15], [0.1, 0.35, 0.2, 0.15, 0.2], drift))
    payment = rng.choice(PAYMENT_METHODS, rows, p=_mix([0.45, 0.25, 0.2, 0.1], [0.3, 0.2, 0.25, 0.25], drift))
    channel = rng.choice(CHANNELS, rows, p=_mix([0.35, 0.25, 0.15, 0.1, 0.15], [0.2, 0.4, 0.1, 0.1, 0.2], drift))

    plan_level = np.select([plan == p for p in PLANS], [0, 1, 2, 3])
    tenure = np.clip(np.round(rng.gamma(2.0, 14.0 * (1 - 0.35 * min(drift, 1)), rows)), 0, 240)
    age = np.clip(np.round(rng.normal(45 - 6 * drift, 13, rows)), 18, 100)
    base_charge = np.array([25.0, 50.0, 85.0, 160.0])[plan_level]
    monthly = np.round(np.clip(base_charge * rng.lognormal(0, 0.15, rows) * (1 + 0.25 * drift), 0, 1000), 2)
    total = np.round(np.clip(monthly * tenure * rng.uniform(0.9, 1.05, rows), 0, 250000), 2)
    support_calls = np.clip(rng.poisson(1.0 + 0.8 * (plan == "basic") + 1.5 * drift, rows), 0, 100)
    session_minutes = np.round(np.clip(rng.lognormal(np.log(25), 0.6, rows) * (1 - 0.3 * min(drift, 1)), 0, 1440), 1)
    last_login = np.clip(np.round(rng.exponential(8 * (1 + drift), rows)), 0, 3650)
    devices = np.clip(rng.poisson(1.5, rows) + 1, 0, 50)
    usage = np.round(np.clip(rng.lognormal(np.log(40) + 0.3 * plan_level, 0.8, rows), 0, 5000), 2)
    satisfaction = np.clip(np.round(rng.normal(7.4 - 0.35 * support_calls - drift, 1.6, rows)), 1, 10)
    late_rate = np.where(payment == "invoice", 0.12, 0.04)
    late_payments = rng.binomial(12, late_rate)

    # The reference relationship: contract, tenure, service friction and payment behaviour drive churn.
    reference_logit = (
        -2.0
        + 1.1 * (contract == "monthly")
        - 0.9 * (contract == "two_year")
        - 0.035 * tenure
        + 0.22 * support_calls
        + 0.025 * np.minimum(last_login, 90)
        - 0.3 * (satisfaction - 7)
        + 0.25 * late_payments
        + 0.008 * (monthly - 60)
        + 0.7 * ((contract == "monthly") & (support_calls >= 3))
        + 0.35 * (channel == "paid_search")
        - 0.35 * (channel == "referral")
        - 0.012 * session_minutes
    )
    # The drifted relationship: price sensitivity and region matter, tenure protects less.
    drifted_logit = (
        -1.6
        + 0.4 * (contract == "monthly")
        - 0.01 * tenure
        + 0.03 * (monthly - 60)
        + 0.9 * (region == "south")
        - 0.6 * (plan == "premium")
        + 0.1 * support_calls
        - 0.15 * (satisfaction - 7)
    )
    weight = min(max(concept_drift, 0.0), 1.0)
    churned = (rng.random(rows) < _sigmoid((1 - weight) * reference_logit + weight * drifted_logit)).astype("int64")

    seconds = np.sort(rng.uniform(0, days * 86400, rows)).astype("int64")
    frame = pd.DataFrame(
        {
            "customer_id": [f"cus_{seed:04d}_{i:09d}" for i in range(rows)],
            "event_time": pd.Timestamp(start, tz="UTC") + pd.to_timedelta(seconds, unit="s"),
            "tenure_months": tenure,
            "age": age,
            "monthly_charges": monthly,
            "total_charges": _with_nulls(total, 0.04, rng),
            "support_calls_90d": support_calls.astype(float),
            "avg_session_minutes": _with_nulls(session_minutes, 0.03, rng),
            "days_since_last_login": last_login,
            "num_devices": devices.astype(float),
            "data_usage_gb": _with_nulls(usage, 0.02, rng),
            "satisfaction_score": _with_nulls(satisfaction, 0.15, rng),
            "late_payments_12m": late_payments.astype(float),
            "plan": plan,
            "region": region,
            "payment_method": payment,
            "contract_type": contract,
            "acquisition_channel": np.where(rng.random(rows) < 0.02, None, channel),
            "churned": churned,
        }
    )
    return frame
