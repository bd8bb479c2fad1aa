"""batchkit's tables, at the layout of the installed batchkit (`SCHEMA_VERSION`).

A later batchkit that changes the layout ships a migration of its own that runs
``upgrade_tables``: it brings tables made here by an earlier batchkit up to date, and
leaves alone those this migration made at the later layout already.
"""

from __future__ import annotations

from typing import ClassVar

from django.db import migrations

from batchkit.contrib.django._schema import create_tables, drop_tables

__all__ = ["Migration"]


class Migration(migrations.Migration):  # type: ignore[misc]  # Django is untyped here
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []
    operations: ClassVar[list[object]] = [
        migrations.RunPython(create_tables, drop_tables, elidable=False),
    ]
