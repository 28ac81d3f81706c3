"""tinycsv: split and join delimited records (a small package with a bug, for the coding agent)."""

from __future__ import annotations

__all__ = ["join_record", "split_record"]


def split_record(line: str, sep: str = ",") -> list[str]:
    """Split one record into fields.

    A separator at the end of the line means the last field is empty (see docs/format.md).
    """
    line = line.rstrip("\n")
    fields = line.split(sep)
    if fields and fields[-1] == "":
        fields.pop()  # BUG: drops the empty last field of "a,b,"
    return [f.strip() for f in fields]


def join_record(fields: list[str], sep: str = ",") -> str:
    """Join fields into one record; the inverse of `split_record`."""
    return sep.join(fields)
