"""Many rows into one table in one statement, for the write paths that insert thousands a batch.

On SQLite, SQLAlchemy's executemany spends more time preparing each row's parameters than SQLite
spends storing it; here the statement is compiled once per table and column set, each column's own
bind processor (UTC conversion, the dialect's date format) is applied to the values, and the rows go to
the driver as tuples: the same SQL and the same stored values, without the per-row machinery. On
PostgreSQL, SQLAlchemy's batched multi-row INSERT is already the fast path and is used as is.
"""
from __future__ import annotations

from collections.abc import Callable
from itertools import groupby
from operator import itemgetter

from sqlalchemy import Connection, Table, insert
from sqlalchemy.engine import Dialect

_Prepared = tuple[str, list[str], list[Callable | None]]
_PREPARED: dict[tuple[str, str, tuple[str, ...], object], _Prepared] = {}


def insert_rows(conn: Connection, table: Table, rows: list[dict], statement: object = None) -> None:
    """Insert `rows` (dicts of column values) into `table`; `statement`: an INSERT of that table to run
    instead of the plain one (an upsert), whose only parameters are the row's values."""
    if not rows:
        return
    statement = insert(table) if statement is None else statement
    if conn.dialect.name != "sqlite":
        conn.execute(statement, rows)  # type: ignore[arg-type]
        return
    for columns, group in groupby(rows, key=lambda row: tuple(row)):  # rows of the same shape together
        sql, order, processors = _prepare(conn.dialect, table, columns, statement)
        defaults = {name: _default(table, name) for name in order if name not in columns}
        values = itemgetter(*order)
        processed = [(position, process) for position, process in enumerate(processors) if process is not None]
        parameters = []
        for row in group:
            parameter = list(values({**defaults, **row} if defaults else row))
            for position, process in processed:
                parameter[position] = process(parameter[position])
            parameters.append(tuple(parameter))
        conn.exec_driver_sql(sql, parameters)


def _default(table: Table, name: str) -> object:
    """The value SQLAlchemy would insert for a column the rows leave out (its scalar default, else NULL)."""
    default = table.c[name].default
    if default is not None and not default.is_scalar:
        raise ValueError(f"{table.name}.{name} has a computed default: give it in every row")
    return default.arg if default is not None else None


def _prepare(dialect: Dialect, table: Table, columns: tuple[str, ...], statement: object) -> _Prepared:
    key = (dialect.name, table.name, columns, statement)
    if key not in _PREPARED:
        compiled = statement.compile(dialect=dialect, column_keys=list(columns))  # type: ignore[attr-defined]
        order = list(compiled.positiontup)
        processors = [table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in order]
        _PREPARED[key] = (compiled.string, order, processors)
    return _PREPARED[key]
