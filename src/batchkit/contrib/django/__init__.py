"""batchkit in a Django project: its tables made by ``migrate``, a runner from settings.

Add ``"batchkit.contrib.django"`` to ``INSTALLED_APPS``; ``python manage.py migrate``
creates batchkit's tables in the project's database, `get_runner` gives the process's
`SyncBatchRunner` on them, and ``python manage.py batchkit_worker --generator
module:function`` runs their items. Settings (all optional)::

    BATCHKIT = {
        "DATABASE": "default",          # the database alias that holds the tables
        "TABLE_PREFIX": "batchkit_",    # the prefix of their names
        "STORAGE": None,                # a storage URL, instead of the one made from DATABASES
    }

Needs the ``django`` extra (``pip install 'batchkit[django]'``), and the storage's own
(``sql``, ``postgres`` or ``mysql``).
"""

from __future__ import annotations

from ...storage._url import require

require("django", "django")

from ._runner import get_runner as get_runner  # noqa: E402
from ._settings import database_alias as database_alias  # noqa: E402
from ._settings import storage_url as storage_url  # noqa: E402
from ._settings import table_prefix as table_prefix  # noqa: E402

__all__ = ["database_alias", "get_runner", "storage_url", "table_prefix"]
