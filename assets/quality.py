"""Great Expectations suites run as blocking Dagster asset checks.

Each stage declares its suite (a list of GX expectations over a table it builds from its
output); `run_suite` validates it in an ephemeral GX context and turns the result into an
`AssetCheckResult` whose metadata names every failed expectation and sample offending values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
import pandas as pd


@dataclass(frozen=True)
class SuiteOutcome:
    success: bool
    failures: list[str]
    evaluated: int


def validate(df: pd.DataFrame, suite_name: str, expectations: list[Any]) -> SuiteOutcome:
    """Validate `df` against GX expectations; return which failed and why."""
    import great_expectations as gx  # imported here: ~3 s, only when a check runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (
        context.data_sources.add_pandas("cameo")
        .add_dataframe_asset(suite_name)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": df})
    )
    suite = gx.ExpectationSuite(name=suite_name, expectations=expectations)
    result = batch.validate(suite, result_format="SUMMARY")
    failures = []
    for r in result.results:
        if r.success:
            continue
        config = r.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k != "batch_id"}
        details = r.result.get("partial_unexpected_list") or r.result.get("observed_value")
        count = r.result.get("unexpected_count")
        failures.append(
            f"{config.type}({kwargs}) failed"
            + (f" on {count} rows" if count else "")
            + (f", e.g. {details}" if details is not None else "")
        )
    return SuiteOutcome(bool(result.success), failures, len(result.results))


def check_result(
    check_name: str, df: pd.DataFrame, expectations: list[Any], asset: str
) -> dg.AssetCheckResult:
    outcome = validate(df, f"{asset}_{check_name}", expectations)
    description = (
        f"all {outcome.evaluated} expectations passed"
        if outcome.success
        else f"{len(outcome.failures)} of {outcome.evaluated} expectations failed: "
        + "; ".join(outcome.failures)
    )
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=check_name,
        passed=outcome.success,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "expectations": outcome.evaluated,
            "failed": len(outcome.failures),
            "failures": dg.MetadataValue.md("\n".join(f"- {f}" for f in outcome.failures) or "-"),
        },
    )
