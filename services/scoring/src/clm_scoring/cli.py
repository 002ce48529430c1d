import json
from datetime import date, datetime
from pathlib import Path

import typer

from clm_events.cli import service_cli
from clm_scoring import transactions_file
from clm_scoring.config import Settings
from clm_scoring.domain.analysis import calibrate, fit_and_compare
from clm_scoring.domain.scores import ModelKind
from clm_scoring.domain.summary import TimeUnit
from clm_scoring.models import SCHEMA

app = service_cli(
    name="scoring",
    app_path="clm_scoring.main:create_app",
    migrations=Path(__file__).parent / "migrations",
    schema=SCHEMA,
    settings=Settings,
)


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date YYYY-MM-DD", param_hint=option) from None


@app.command()
def fit(
    transactions: Path = typer.Option(
        ...,
        "--transactions",
        help="CSV 'customer_id,date,amount' with a header, or the CDNOW layout "
        "'customer_id yyyymmdd cds dollars'.",
    ),
    calibration_end: str = typer.Option(
        None, help="Last day of the calibration period, YYYY-MM-DD (default: the last date)."
    ),
    holdout_end: str = typer.Option(
        None, help="Last day of the holdout period: also print predicted vs actual purchases."
    ),
    time_unit: TimeUnit = typer.Option(TimeUnit.week, help="Unit of t_x, T and the parameters."),
    model: ModelKind = typer.Option(ModelKind.bgnbd, help="bgnbd or pareto_nbd."),
) -> None:
    """Fit the purchase and spend models on a transaction file; print the parameters and
    log-likelihood as JSON (and the holdout comparison with --holdout-end)."""
    if model is ModelKind.heuristic:
        raise typer.BadParameter("fit bgnbd or pareto_nbd", param_hint="--model")
    try:
        data = transactions_file.read(transactions)
    except transactions_file.FileError as exc:
        raise typer.BadParameter(str(exc), param_hint="--transactions") from None
    end = _day(calibration_end, "--calibration-end") or max(
        d for days in data.values() for d, _ in days
    )
    holdout = _day(holdout_end, "--holdout-end")
    try:
        cal = calibrate(data, calibration_end=end, holdout_end=holdout, unit=time_unit)
        result = fit_and_compare(
            cal, kind=model, unit=time_unit, calibration_end=end, holdout_end=holdout
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    typer.echo(json.dumps(result, indent=2))
