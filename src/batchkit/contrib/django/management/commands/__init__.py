"""``python manage.py batchkit_worker``."""
