"""Reading an analyst's transaction file for `clm-scoring fit`.

Two layouts: CSV with a header `customer_id,date,amount`, and the CDNOW layout, whitespace
separated `customer_id yyyymmdd cds dollars` (the published sample adds a second id
column: `customer_id sample_id yyyymmdd cds dollars`), with or without a header line.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path

Transactions = dict[str, list[tuple[date, Decimal]]]


class FileError(ValueError):
    pass


def _date(text: str, where: str) -> date:
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(text.strip()[:10], fmt).date()
        except ValueError:
            continue
    raise FileError(f"{where}: date {text!r} is not YYYY-MM-DD or YYYYMMDD")


def _amount(text: str, where: str) -> Decimal:
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise FileError(f"{where}: amount {text!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise FileError(f"{where}: amount {text!r} must be a finite number >= 0")
    return value


def read(path: Path) -> Transactions:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise FileError(f"{path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FileError(f"{path}: not a UTF-8 text file") from None
    first = next((line for line in lines if line.strip()), None)
    if first is None:
        raise FileError(f"{path}: the file is empty")
    out = _read_csv(path, lines) if "," in first else _read_cdnow(path, lines)
    if not out:
        raise FileError(f"{path}: no transactions")
    return out


def _read_csv(path: Path, lines: list[str]) -> Transactions:
    reader = csv.DictReader(lines)
    need = {"customer_id", "date", "amount"}
    if reader.fieldnames is None or not need <= set(reader.fieldnames):
        raise FileError(f"{path}: a CSV needs the header customer_id,date,amount")
    out: Transactions = defaultdict(list)
    for n, row in enumerate(reader, start=2):
        where = f"{path}:{n}"
        customer = (row["customer_id"] or "").strip()
        if not customer:
            raise FileError(f"{where}: customer_id is empty")
        out[customer].append((_date(row["date"] or "", where), _amount(row["amount"] or "", where)))
    return dict(out)


def _read_cdnow(path: Path, lines: Iterable[str]) -> Transactions:
    out: Transactions = defaultdict(list)
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{n}"
        if len(fields) not in (4, 5):
            raise FileError(
                f"{where}: expected 'customer_id yyyymmdd cds dollars', got {len(fields)} fields"
            )
        day, dollars = fields[-3], fields[-1]
        if n == 1 and not day.isdigit():
            continue  # a header line
        out[fields[0]].append((_date(day, where), _amount(dollars, where)))
    return dict(out)
