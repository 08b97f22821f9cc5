"""The built-in datasets, one per task, each with controllable covariate and concept drift.

- ``churn`` (binary): one row is a customer at one point in time; ``churned`` says whether they left within the next
  30 days. Features interact (monthly contracts with many support calls churn most) and about one customer in six
  churns, so the task is neither trivial nor hopeless.
- ``tiers`` (multiclass): one row is a loyalty-programme member at the yearly review; ``next_tier`` is the tier
  (bronze, silver, gold, platinum) the member reaches at the next review. Spend, engagement and the current tier
  drive it, with noise enough that no model gets every member right.
- ``claims`` (regression): one row is a closed motor-insurance claim; ``claim_cost`` is what it cost. The cost is
  positive and right-skewed, and its spread grows with the cost and is widest for injury claims.

Every generator has the same arguments: ``covariate_drift`` (0 = none, 1 = strong) moves the feature distributions
and ``concept_drift`` (0..1) blends in a different relationship between features and target, so a model trained
before the drift loses accuracy. Concept drift leaves the features unchanged, row for row. Each dataset's columns
match ``include/config/datasets/<name>.yaml``; ``BUILT_IN`` lists them by task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

PLANS = ["basic", "standard", "premium", "enterprise"]
REGIONS = ["north", "south", "east", "west", "central"]
PAYMENT_METHODS = ["card", "bank_transfer", "paypal", "invoice"]
CONTRACTS = ["monthly", "annual", "two_year"]
CHANNELS = ["organic", "paid_search", "referral", "partner", "social"]
TIERS = ["bronze", "silver", "gold", "platinum"]
DEVICES = ["ios", "android", "web"]
CLAIM_TYPES = ["collision", "glass", "theft", "weather", "injury"]
VEHICLE_CLASSES = ["compact", "sedan", "suv", "van", "luxury"]
REPORT_CHANNELS = ["app", "phone", "broker", "web"]
DEDUCTIBLES = [250.0, 500.0, 1000.0, 2500.0]
MAX_CLAIM_COST = 500_000.0


def _mix(base: list[float], drifted: list[float], weight: float) -> np.ndarray:
    """Category probabilities moved from ``base`` towards ``drifted`` by ``weight`` (clipped to 0..1)."""
    weight = min(max(weight, 0.0), 1.0)
    probs = (1 - weight) * np.asarray(base) + weight * np.asarray(drifted)
    return probs / probs.sum()


def _choice(
    rng: np.random.Generator, values: list[str], rows: int, base: list[float], drifted: list[float], drift: float
) -> np.ndarray:
    """A categorical column whose shares move from ``base`` towards ``drifted`` with covariate drift."""
    return rng.choice(values, rows, p=_mix(base, drifted, drift))


def _blend(reference: np.ndarray, drifted: np.ndarray, concept_drift: float) -> np.ndarray:
    """The target's driver (a logit, class scores or a log-cost) moved towards the drifted relationship."""
    weight = min(max(concept_drift, 0.0), 1.0)
    return (1 - weight) * reference + weight * drifted


def _with_nulls(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Numbers with about ``share`` of them missing (NaN)."""
    values = values.astype(float)
    values[rng.random(values.shape[0]) < share] = np.nan
    return values


def _with_missing_labels(values: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Categories with about ``share`` of them missing (None)."""
    return np.where(rng.random(values.shape[0]) < share, None, values)


def _ids_and_times(
    rng: np.random.Generator, prefix: str, seed: int, rows: int, start: str, days: int
) -> tuple[list[str], pd.Series]:
    """Unique ids that name the seed (so batches of different seeds never collide) and sorted UTC event times."""
    seconds = np.sort(rng.uniform(0, days * 86400, rows)).astype("int64")
    ids = [f"{prefix}_{seed:04d}_{i:09d}" for i in range(rows)]
    return ids, pd.Timestamp(start, tz="UTC") + pd.to_timedelta(seconds, unit="s")


def _check_rows(rows: int) -> None:
    if rows < 1:
        raise ValueError(f"rows must be positive, got {rows}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(scores: np.ndarray) -> np.ndarray:
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _draw_classes(rng: np.random.Generator, probabilities: np.ndarray, labels: Sequence[str]) -> np.ndarray:
    """One label per row, drawn from its class probabilities with one uniform number per row.

    One number per row whatever the probabilities, so concept drift changes labels without shifting the random
    stream that the later columns are drawn from.
    """
    position = (probabilities.cumsum(axis=1) < rng.random(len(probabilities))[:, None]).sum(axis=1)
    return np.asarray(labels)[np.minimum(position, len(labels) - 1)]


def generate_churn(
    rows: int,
    seed: int = 0,
    start: str = "2025-01-01",
    days: int = 365,
    covariate_drift: float = 0.0,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Generate the churn dataset (binary).

    ``covariate_drift`` gives shorter tenure, higher bills, more support calls, and a plan and contract mix that
    leans to cheap monthly plans; ``concept_drift`` makes price and region matter more and tenure protect less.

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
    _check_rows(rows)
    rng = np.random.default_rng(seed)
    drift = covariate_drift

    contract = _choice(rng, CONTRACTS, rows, [0.5, 0.32, 0.18], [0.8, 0.15, 0.05], drift)
    plan = _choice(rng, PLANS, rows, [0.38, 0.34, 0.22, 0.06], [0.6, 0.25, 0.12, 0.03], drift)
    region = _choice(rng, REGIONS, rows, [0.22, 0.2, 0.2, 0.23, 0.15], [0.1, 0.35, 0.2, 0.15, 0.2], drift)
    payment = _choice(rng, PAYMENT_METHODS, rows, [0.45, 0.25, 0.2, 0.1], [0.3, 0.2, 0.25, 0.25], drift)
    channel = _choice(rng, CHANNELS, rows, [0.35, 0.25, 0.15, 0.1, 0.15], [0.2, 0.4, 0.1, 0.1, 0.2], drift)

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
    churned = (rng.random(rows) < _sigmoid(_blend(reference_logit, drifted_logit, concept_drift))).astype("int64")

    ids, times = _ids_and_times(rng, "cus", seed, rows, start, days)
    return pd.DataFrame(
        {
            "customer_id": ids,
            "event_time": times,
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
            "acquisition_channel": _with_missing_labels(channel, 0.02, rng),
            "churned": churned,
        }
    )


def generate_tiers(
    rows: int,
    seed: int = 0,
    start: str = "2025-01-01",
    days: int = 365,
    covariate_drift: float = 0.0,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Generate the loyalty-tier dataset (multiclass: bronze, silver, gold or platinum at the next review).

    ``covariate_drift`` brings newer members who order less, at bigger discounts, more often from Android phones;
    ``concept_drift`` is a programme change that rewards app engagement and referrals rather than spend.

    Args:
        rows: number of rows.
        seed: random seed; the same arguments give the same rows.
        start: first day of ``reviewed_at`` (UTC).
        days: ``reviewed_at`` is spread uniformly over this many days after ``start``.
        covariate_drift: 0 for the reference distribution, up to 1 (or more) for strong feature drift.
        concept_drift: 0 for the reference relationship, 1 for a fully different one.

    Returns:
        A DataFrame with ``member_id``, ``reviewed_at``, 16 features and ``next_tier``, sorted by time.
    """
    _check_rows(rows)
    rng = np.random.default_rng(seed)
    drift = covariate_drift
    fading = 1 - 0.3 * min(drift, 1)  # strong drift shortens tenure and thins out orders, but never to zero

    current = _choice(rng, TIERS, rows, [0.42, 0.3, 0.19, 0.09], [0.55, 0.27, 0.13, 0.05], drift)
    region = _choice(rng, REGIONS, rows, [0.22, 0.2, 0.2, 0.23, 0.15], [0.12, 0.3, 0.2, 0.18, 0.2], drift)
    device = _choice(rng, DEVICES, rows, [0.42, 0.33, 0.25], [0.25, 0.55, 0.2], drift)
    channel = _choice(rng, CHANNELS, rows, [0.35, 0.25, 0.15, 0.1, 0.15], [0.2, 0.4, 0.1, 0.1, 0.2], drift)
    payment = _choice(rng, PAYMENT_METHODS, rows, [0.5, 0.2, 0.25, 0.05], [0.4, 0.15, 0.4, 0.05], drift)

    level = np.select([current == tier for tier in TIERS], [0, 1, 2, 3])
    tenure = np.clip(np.round(rng.gamma(2.0, 16.0 * fading, rows)), 0, 300)
    age = np.clip(np.round(rng.normal(41 - 4 * drift, 12, rows)), 18, 100)
    # Orders are over-dispersed (a gamma-Poisson mixture), as real purchase counts are.
    orders = np.clip(rng.poisson(rng.gamma(2.0, (3.0 + 2.5 * level) * fading, rows)), 0, 1000)
    order_value = np.round(np.clip(rng.lognormal(np.log(40) + 0.2 * level, 0.45, rows) * (1 + 0.2 * drift), 1, 5000), 2)
    spend = np.round(np.clip(orders * order_value * rng.uniform(0.9, 1.1, rows), 0, 500_000), 2)
    sessions = np.clip(rng.poisson(rng.lognormal(np.log(5 + 3 * level), 0.7, rows)), 0, 3000)
    returns_rate = np.round(rng.beta(2, 14, rows), 3)
    discount_share = np.round(np.clip(rng.beta(2, 6, rows) + 0.1 * drift, 0, 1), 3)
    days_since_order = np.clip(np.round(rng.exponential(30 / (1 + 0.3 * level) * (1 + drift), rows)), 0, 3650)
    referrals = np.clip(rng.poisson(0.2 + 0.2 * level, rows), 0, 100)
    tickets = np.clip(rng.poisson(0.8 + 0.5 * drift, rows), 0, 100)

    tier_rank = np.arange(len(TIERS))
    distance = np.abs(tier_rank[None, :] - level[:, None])
    # The reference rules: spend and order recency move members up, returns and discount hunting hold them back,
    # and a member rarely moves more than one tier a year. Platinum also takes years of membership.
    value = (
        0.9 * (np.log1p(spend) - 5.5)
        + 0.25 * np.log1p(sessions)
        - 3.0 * returns_rate
        - 1.2 * discount_share
        - 0.012 * np.minimum(days_since_order, 180)
        + 0.25 * referrals
        - 0.2 * tickets
    )
    reference_scores = tier_rank * value[:, None] + np.array([0.0, 0.2, -0.6, -2.2]) - 0.6 * distance
    reference_scores[:, 3] += 0.03 * (np.minimum(tenure, 72) - 24)
    # The drifted rules: app engagement and referrals earn tiers; spend and the current tier count for less.
    engagement = (
        0.8 * (np.log1p(sessions) - 2.0) + 0.6 * referrals + 0.4 * (device != "web") + 0.2 * (np.log1p(spend) - 5.5)
    )
    drifted_scores = tier_rank * engagement[:, None] + np.array([0.0, -0.4, -1.4, -3.2]) - 0.25 * distance
    probabilities = _softmax(_blend(reference_scores, drifted_scores, concept_drift))
    next_tier = _draw_classes(rng, probabilities, TIERS)

    ids, times = _ids_and_times(rng, "mem", seed, rows, start, days)
    return pd.DataFrame(
        {
            "member_id": ids,
            "reviewed_at": times,
            "tenure_months": tenure,
            "age": _with_nulls(age, 0.06, rng),
            "orders_12m": orders.astype(float),
            "avg_order_value": order_value,
            "spend_12m": spend,
            "app_sessions_30d": _with_nulls(sessions, 0.08, rng),
            "returns_rate": _with_nulls(returns_rate, 0.03, rng),
            "discount_share": discount_share,
            "days_since_last_order": days_since_order,
            "referrals_12m": referrals.astype(float),
            "support_tickets_12m": tickets.astype(float),
            "current_tier": current,
            "region": region,
            "device": device,
            "signup_channel": _with_missing_labels(channel, 0.02, rng),
            "payment_method": payment,
            "next_tier": next_tier,
        }
    )


def generate_claims(
    rows: int,
    seed: int = 0,
    start: str = "2025-01-01",
    days: int = 365,
    covariate_drift: float = 0.0,
    concept_drift: float = 0.0,
) -> pd.DataFrame:
    """Generate the insurance-claim dataset (regression: ``claim_cost``, positive and right-skewed).

    The cost is log-normal around a level set by claim type, vehicle value, injuries, reporting delay and region;
    the noise is wider for injury claims, late reports and broker-handled claims. ``covariate_drift`` brings more
    weather claims, more SUVs, older and pricier vehicles and later reports; ``concept_drift`` is repair-cost
    inflation for SUVs and luxury cars, costlier storms, cheaper injuries after a legal reform, and dearer labour
    in the south.

    Args:
        rows: number of rows.
        seed: random seed; the same arguments give the same rows.
        start: first day of ``reported_at`` (UTC).
        days: ``reported_at`` is spread uniformly over this many days after ``start``.
        covariate_drift: 0 for the reference distribution, up to 1 (or more) for strong feature drift.
        concept_drift: 0 for the reference relationship, 1 for a fully different one.

    Returns:
        A DataFrame with ``claim_id``, ``reported_at``, 13 features and ``claim_cost``, sorted by time.
    """
    _check_rows(rows)
    rng = np.random.default_rng(seed)
    drift = covariate_drift

    claim_type = _choice(rng, CLAIM_TYPES, rows, [0.42, 0.2, 0.08, 0.18, 0.12], [0.3, 0.17, 0.09, 0.34, 0.1], drift)
    vehicle = _choice(rng, VEHICLE_CLASSES, rows, [0.3, 0.32, 0.22, 0.08, 0.08], [0.2, 0.26, 0.34, 0.08, 0.12], drift)
    region = _choice(rng, REGIONS, rows, [0.22, 0.2, 0.2, 0.23, 0.15], [0.15, 0.3, 0.2, 0.2, 0.15], drift)
    channel = _choice(rng, REPORT_CHANNELS, rows, [0.35, 0.35, 0.2, 0.1], [0.55, 0.2, 0.15, 0.1], drift)
    deductible = rng.choice(DEDUCTIBLES, rows, p=[0.2, 0.4, 0.3, 0.1])

    vehicle_rank = np.select([vehicle == v for v in VEHICLE_CLASSES], [0, 1, 2, 3, 4])
    age = np.clip(np.round(rng.normal(45, 14, rows)), 18, 100)
    vehicle_age = np.clip(np.round(rng.gamma(2.2, 2.8 * (1 + 0.3 * drift), rows)), 0, 50)
    new_price = np.array([18_000.0, 26_000.0, 38_000.0, 32_000.0, 70_000.0])[vehicle_rank]
    vehicle_value = np.round(
        np.clip(new_price * rng.lognormal(0, 0.3, rows) * 0.92**vehicle_age * (1 + 0.2 * drift), 500, 2_000_000), -1
    )
    mileage = np.clip(np.round(rng.lognormal(np.log(14_000), 0.45, rows)), 0, 300_000)
    prior_claims = np.clip(rng.poisson(0.35 + 0.2 * drift, rows), 0, 50)
    days_to_report = np.clip(np.round(rng.exponential(3 * (1 + drift), rows)), 0, 365)
    injured = np.clip(rng.poisson(np.where(claim_type == "injury", 1.3, 0.05), rows), 0, 20)
    police_share = np.select(
        [claim_type == "theft", claim_type == "injury", claim_type == "collision"], [0.95, 0.8, 0.4], 0.1
    )
    police_report = np.where(rng.random(rows) < police_share, "yes", "no")

    # The reference costs: the claim type sets the level, pricier cars cost more to repair or replace, each injured
    # person adds treatment, late reports and repeat claimants cost more, and labour costs vary by region.
    type_level = np.select([claim_type == t for t in CLAIM_TYPES], [8.0, 6.2, 8.4, 7.5, 8.6])
    value_elasticity = np.select([claim_type == t for t in CLAIM_TYPES], [0.6, 0.35, 0.9, 0.5, 0.15])
    regional_labour = np.select([region == r for r in REGIONS], [0.1, -0.1, 0.0, 0.15, 0.0])
    reference_log_cost = (
        type_level
        + value_elasticity * np.log(vehicle_value / 25_000)
        + 0.45 * injured
        + 0.012 * np.minimum(days_to_report, 60)
        + 0.1 * prior_claims
        + regional_labour
        + 0.08 * np.log(deductible / 500)
        - 0.3 * ((claim_type == "theft") & (police_report == "no"))
    )
    # The drifted costs: parts for SUVs and luxury cars and storm repairs inflate, injury awards are capped, and
    # labour in the south gets dearer.
    drifted_log_cost = (
        reference_log_cost
        + 0.5 * np.isin(vehicle, ["suv", "luxury"])
        + 0.6 * (claim_type == "weather")
        - 0.5 * (claim_type == "injury")
        + 0.3 * (region == "south")
    )
    noise_scale = 0.3 + 0.25 * (claim_type == "injury") + 0.1 * (days_to_report > 14) + 0.1 * (channel == "broker")
    log_cost = _blend(reference_log_cost, drifted_log_cost, concept_drift) + noise_scale * rng.normal(0, 1, rows)
    claim_cost = np.round(np.clip(np.exp(log_cost), 1, MAX_CLAIM_COST), 2)

    ids, times = _ids_and_times(rng, "clm", seed, rows, start, days)
    return pd.DataFrame(
        {
            "claim_id": ids,
            "reported_at": times,
            "policyholder_age": _with_nulls(age, 0.03, rng),
            "vehicle_age_years": vehicle_age,
            "vehicle_value": vehicle_value,
            "annual_mileage_km": _with_nulls(mileage, 0.08, rng),
            "prior_claims_3y": prior_claims.astype(float),
            "days_to_report": days_to_report,
            "people_injured": injured.astype(float),
            "deductible": deductible,
            "claim_type": claim_type,
            "vehicle_class": vehicle,
            "region": region,
            "report_channel": _with_missing_labels(channel, 0.02, rng),
            "police_report": police_report,
            "claim_cost": claim_cost,
        }
    )


@dataclass(frozen=True)
class BuiltInDataset:
    """A built-in dataset: its generator and the dataset config that describes its columns."""

    name: str
    task: str
    target: str
    generate: Callable[..., pd.DataFrame]

    @property
    def config_path(self) -> str:
        """The dataset config of the generated data (``include/config/datasets/<name>.yaml``)."""
        # Imported here: the GPU check imports the generators where PyYAML and pydantic are not installed.
        from mlsteps.config import DEFAULT_CONFIG_PATH

        return str(DEFAULT_CONFIG_PATH.parent / "datasets" / f"{self.name}.yaml")


BUILT_IN: dict[str, BuiltInDataset] = {
    "binary": BuiltInDataset("churn", "binary", "churned", generate_churn),
    "multiclass": BuiltInDataset("tiers", "multiclass", "next_tier", generate_tiers),
    "regression": BuiltInDataset("claims", "regression", "claim_cost", generate_claims),
}
