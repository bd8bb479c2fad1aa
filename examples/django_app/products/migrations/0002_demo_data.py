"""The demo's data: a dozen products, and the users ``ada`` and ``bob``.

Their password is ``DEMO_PASSWORD`` from the environment when ``migrate`` runs, or
``batchkit-demo``: a demo's, published here, for a machine of your own only.
"""

from __future__ import annotations

import os
from decimal import Decimal
from typing import Any, ClassVar

from django.contrib.auth.hashers import make_password
from django.db import migrations

#: The catalogue; "Cursed Lamp" is the one the generator cannot render.
PRODUCTS = [
    ("Aurora Desk Lamp", "49.00"),
    ("Basalt Mug", "14.50"),
    ("Cedar Bookshelf", "189.00"),
    ("Cursed Lamp", "13.13"),
    ("Dune Throw Pillow", "24.90"),
    ("Fjord Wool Blanket", "79.00"),
    ("Granite Coaster Set", "19.00"),
    ("Harbor Wall Clock", "39.90"),
    ("Indigo Tea Kettle", "59.00"),
    ("Juniper Candle", "12.00"),
    ("Kelp Planter", "29.50"),
    ("Lumen Floor Lamp", "149.00"),
]
USERS = ["ada", "bob"]


def add(apps: Any, schema_editor: Any) -> None:
    product = apps.get_model("products", "Product")
    user = apps.get_model("auth", "User")
    alias = schema_editor.connection.alias
    for name, price in PRODUCTS:
        product.objects.using(alias).get_or_create(name=name, defaults={"price": Decimal(price)})
    password = os.environ.get("DEMO_PASSWORD") or "batchkit-demo"
    for username in USERS:
        if not user.objects.using(alias).filter(username=username).exists():
            user.objects.using(alias).create(username=username, password=make_password(password))


def remove(apps: Any, schema_editor: Any) -> None:
    alias = schema_editor.connection.alias
    apps.get_model("products", "Product").objects.using(alias).filter(
        name__in=[name for name, _ in PRODUCTS]
    ).delete()
    apps.get_model("auth", "User").objects.using(alias).filter(username__in=USERS).delete()


class Migration(migrations.Migration):
    dependencies: ClassVar[list[tuple[str, str]]] = [
        ("products", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]
    operations: ClassVar[list[object]] = [migrations.RunPython(add, remove)]
